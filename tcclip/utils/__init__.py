"""Shared by every layer below the commands: the error a user can fix (`errors`), refusing NaN and Inf (`finite`),
writing files all-or-nothing (`outputs`) and the commands' progress bar (`progress`).

May import: the standard library, torch, rich (`progress`). Nothing else from tcclip.
"""
