"""Sphinx extension: document the constants a package re-exports, with their ``#:`` comments.

autodoc reads a constant's documentation (a ``#:`` comment above it, or a string literal below it)
from the source of the module being documented. A subpackage documented at its public path
(``lib.models``) only imports its constants from the submodule that defines them, so autodoc would
skip them (or, asked for one by name, show the docstring of its type, ``dict``). This documenter
reads the comment in the defining module instead: the loaded ``lib`` module whose attribute of that
name is the same object and whose source documents it.
"""

import sys

from sphinx.errors import PycodeError
from sphinx.ext.autodoc import DataDocumenter, ModuleDocumenter
from sphinx.pycode import ModuleAnalyzer

PACKAGE = "lib"


def defining_comment(name: str, obj: object) -> list[str] | None:
    """The lines of the comment that documents constant ``name`` where it is defined, or None."""
    for modname, module in list(sys.modules.items()):
        if modname.partition(".")[0] != PACKAGE or getattr(module, name, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except PycodeError:  # no source to read
            continue
        if ("", name) in docs:
            return list(docs["", name])
    return None


class ConstantDocumenter(DataDocumenter):
    """autodoc's data documenter that also takes re-exported, upper-case constants."""

    priority = DataDocumenter.priority + 1

    @classmethod
    def can_document_member(cls, member, membername, isattr, parent):
        return super().can_document_member(member, membername, isattr, parent) or (
            isinstance(parent, ModuleDocumenter)
            and membername.isupper()
            and defining_comment(membername, member) is not None
        )

    def get_module_comment(self, attrname):
        return super().get_module_comment(attrname) or defining_comment(attrname, self.object)


def _keep(app, what, name, obj, skip, options):
    """Keep an upper-case constant that autodoc skips for lack of a comment in the package itself.

    Only a name the documented module exports (its ``__all__``, where it has one): autodoc marks the
    others skipped, and a module that merely imports a constant (``lib.train`` imports ``RECIPES``)
    must not document a second copy of it.
    """
    if what == "module" and skip and name.isupper() and defining_comment(name, obj) is not None:
        module = sys.modules.get(app.env.temp_data.get("autodoc:module") or "")
        exported = getattr(module, "__all__", None)
        if exported is None or name in exported:
            return False
    return None


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_autodocumenter(ConstantDocumenter, override=True)
    app.connect("autodoc-skip-member", _keep)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
