"""The control API: thin views over trading services (writes) and selectors (reads), one module per resource.

Every authenticated user shares one book (there is no per-user ownership yet); the kill switch and account
writes and credential fields are for staff only.
"""
