"""How ``--help`` is laid out: argparse's formatter, but lines never break inside a hyphenated
name (``fork-private-4g``, ``shared-pt-2005``), which a user copies whole."""

from __future__ import annotations

import argparse
import re
import textwrap


class HelpFormatter(argparse.HelpFormatter):
    """Wraps help and descriptions at spaces only."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = re.sub(r"\s+", " ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = re.sub(r"\s+", " ", text).strip()
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False,
                             break_long_words=False)


class RawDescriptionHelpFormatter(HelpFormatter):
    """Options wrapped as :class:`HelpFormatter` does; the description and epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help is laid out by :class:`HelpFormatter` unless told otherwise; the
    class of every subcommand's parser too."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
