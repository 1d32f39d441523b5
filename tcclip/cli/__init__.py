"""The `tcclip` command line: every sub-command's argument parsing lives here, and nowhere else.

`main(argv)` runs a command and returns its exit code; `console_main()` is the console script. May import all of
tcclip; nothing in tcclip imports it.
"""

from tcclip.cli.commands import console_main, main

__all__ = ["console_main", "main"]
