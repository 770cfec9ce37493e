#!/usr/bin/env python
"""Django's command-line utility."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
    os.environ.setdefault("LOG_FORMAT", "console")  # a person runs manage.py: readable lines (make run's roles too)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
