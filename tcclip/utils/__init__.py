"""Shared by every layer below the commands: the error a user can fix (`errors`), refusing NaN and Inf (`finite`),
and writing files all-or-nothing (`outputs`).

May import: the standard library, torch. Nothing else from tcclip.
"""
