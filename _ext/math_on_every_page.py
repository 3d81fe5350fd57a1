"""Load MathJax on every page, not only on pages whose body has math.

The sidebar lists every chapter title, and some titles hold math (chapter 07's
$G_{\\mathrm{ReLU}}$). Sphinx adds MathJax only to pages with equations in their body, so on the API
reference and the bibliography the sidebar showed raw TeX. The "always" asset policy includes the
script everywhere.
"""


def setup(app):
    app.set_html_assets_policy("always")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
