"""Exit codes of export, import and migrate, one table for the three (README, "Moving
counters"), and import's line cap: light enough for `--help` to show them without
loading the commands."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

# An import line longer than this is rejected unread: the longest a valid line can be is
# about 17 KiB (20 Keys of 128 bytes, each escaped \\uXXXX), so this leaves room for
# spacing and bounds what one line costs.
MAX_LINE_BYTES: Final = 65536


class Exit(IntEnum):
    DONE = 0
    # Done, but some lines (import) or groups (migrate) were rejected; each named on stderr.
    REJECTS = 1
    # Could not run, or not to the end: the config, the arguments, the input, the store or
    # the source. Nothing to undo: rerun the same command once fixed (an import rerun
    # changes nothing already done, a migrate rerun resumes from its checkpoint).
    COULD_NOT_RUN = 2
    # import --on-conflict fail stopped at a group that differs from the one already there.
    CONFLICT = 3
    # migrate interrupted (Ctrl-C); rerun to resume.
    INTERRUPTED = 130


EXIT_CODES_HELP: Final = """exit codes:
  0  done
  1  done, but some lines (import) or groups (migrate) were rejected: each is named on
     stderr (the first 100; the rest are counted in the final report)
  2  could not run, or not to the end: the config, the arguments, the input, the store or
     the source; rerun the same command once fixed (an import rerun changes nothing
     already done; a migrate rerun resumes)
  3  import --on-conflict fail stopped at a conflict: nothing after that line was written
  130 migrate interrupted; rerun to resume
"""
