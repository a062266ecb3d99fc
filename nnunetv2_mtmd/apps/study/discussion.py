"""The report's ``## Discussion``: written by a human, kept when the report is regenerated, and
flagged when it quotes numbers that the regenerated tables no longer hold."""

from __future__ import annotations

import re

DISCUSSION_HEADING = "## Discussion"
DISCUSSION_PLACEHOLDER = "**To be written by a human after reading the numbers.**"


def _discussion_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the ``## Discussion`` section of a report (up to the next ``## ``
    heading or the end), or None."""
    lines = text.splitlines(keepends=True)
    start = None
    pos = 0
    for line in lines:
        if start is None and line.rstrip() == DISCUSSION_HEADING:
            start = pos
        elif start is not None and line.startswith("## "):
            return start, pos
        pos += len(line)
    return None if start is None else (start, len(text))


def keep_discussion(new_text: str, old_text: str) -> str:
    """``new_text`` with its placeholder discussion replaced by the discussion of ``old_text``, when
    a human has written one there (the section no longer holds :data:`DISCUSSION_PLACEHOLDER`).

    The report is regenerated whenever a fold is evaluated; this keeps the written discussion instead
    of overwriting it. The kept text is not checked against the new numbers: reread it when they
    change."""
    old_span, new_span = _discussion_span(old_text), _discussion_span(new_text)
    if old_span is None or new_span is None:
        return new_text
    old_section = old_text[old_span[0]:old_span[1]]
    if DISCUSSION_PLACEHOLDER in old_section:
        return new_text
    if not old_section.endswith("\n"):
        old_section += "\n"
    return new_text[:new_span[0]] + old_section + new_text[new_span[1]:]


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def unsourced_numbers(report_text: str) -> list[str]:
    """Numbers of the ``## Discussion`` section that appear nowhere else in the report, in order.

    The report's rule is that it holds no number the study did not produce; a discussion should only
    quote the tables (as printed there: ``0.861``, not ``0.86``). Signs are ignored, so ``-0.013``
    matches the table's ``−0.013``; an integer such as a fold or case count matches any occurrence.
    Years and the like therefore pass whenever they appear elsewhere; this is a guard against typos
    and stale numbers, not a proof."""
    span = _discussion_span(report_text)
    if span is None:
        return []
    discussion = report_text[span[0]:span[1]]
    rest = set(_NUMBER.findall(report_text[:span[0]] + report_text[span[1]:]))
    return [n for n in dict.fromkeys(_NUMBER.findall(discussion)) if n not in rest]


STALE_PREFIX = "> **Out of date?**"


def mark_stale_discussion(report_text: str, limit: int = 12) -> tuple[str, list[str]]:
    """The report with a warning line put first in its written ``## Discussion`` when that quotes
    numbers found nowhere else in the report (:func:`unsourced_numbers`), and those numbers.

    A kept discussion is not rewritten when new folds change the tables (:func:`keep_discussion`); the
    warning tells the reader so, in the file and not only in the study's log. A warning line of an
    earlier regeneration is removed first, so warnings do not pile up and one disappears once the
    text is rewritten."""
    span = _discussion_span(report_text)
    if span is None:
        return report_text, []
    head, section, tail = report_text[:span[0]], report_text[span[0]:span[1]], report_text[span[1]:]
    lines: list[str] = []
    dropped = False
    for ln in section.splitlines(keepends=True):
        if ln.startswith(STALE_PREFIX) or (dropped and not ln.strip()):
            dropped = ln.startswith(STALE_PREFIX)
            continue
        dropped = False
        lines.append(ln)
    text = head + "".join(lines) + tail
    if DISCUSSION_PLACEHOLDER in section:
        return text, []
    stray = unsourced_numbers(text)
    if not stray:
        return text, []
    shown = ", ".join(stray[:limit]) + (f" and {len(stray) - limit} more" if len(stray) > limit else "")
    warning = (f"{STALE_PREFIX} This discussion quotes {len(stray)} number(s) that appear nowhere else in the "
               f"report ({shown}): it was probably written for earlier tables. Reread it against the tables "
               "above.\n\n")
    first = lines[0] if lines else DISCUSSION_HEADING + "\n"
    rest = lines[1:]
    if rest and not rest[0].strip():
        first, rest = first + rest[0], rest[1:]
    elif not first.endswith("\n\n"):
        first = first.rstrip("\n") + "\n\n"
    return head + first + warning + "".join(rest) + tail, stray


