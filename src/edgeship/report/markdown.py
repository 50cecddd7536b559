"""User text in report.md, which GitHub renders (and $GITHUB_STEP_SUMMARY shows): escaped."""

from __future__ import annotations

# GitHub-flavoured markdown of user text (recipe names, error messages, device names): no raw HTML
# (`<` and `&` as entities), no cell break (`|`), no code span or line break it did not ask for.
# The backslash is escaped too: text ending in one must not escape the character after it.
_MARKDOWN_ESCAPES = str.maketrans({"\\": "\\\\", "&": "&amp;", "<": "&lt;", "|": "\\|",
                                   "`": "\\`"})


def md_text(text: object) -> str:
    r"""`text` as literal GFM text, on one line: safe in a table cell, a list item or a heading.

    >>> print(md_text("<img onerror=x> a|b\n`c`"))
    &lt;img onerror=x> a\|b \`c\`
    """
    one_line = "".join(" " if ord(c) < 32 or c == "\x7f" else c for c in str(text))
    return one_line.translate(_MARKDOWN_ESCAPES)


def md_code(text: object) -> str:
    """`text` as a code span: inside one nothing is markup, but a backtick would end it."""
    return "`" + "".join(" " if ord(c) < 32 or c == "`" else c for c in str(text)) + "`"
