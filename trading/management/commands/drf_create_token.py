"""`manage.py drf_create_token USER [-r]`: DRF's command, kept for provisioning scripts, now issuing a hashed token
(see api_token). It prints "Generated token <key> for user <user>" as DRF did; the key is shown this once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from trading import selectors, services
from trading.management.commands.api_token import user_get

ACTOR = "command:drf_create_token"


class Command(BaseCommand):
    help = ("Issue an API token for a user and print its key once (DRF's command name and output; see api_token). "
            "-r first revokes the user's other tokens.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("-r", "--reset", action="store_true", help="revoke the user's existing tokens first")

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_get(options["username"])
        if options["reset"]:
            for token in selectors.api_token_list(user=user):
                services.api_token_revoke(token=token, by=ACTOR)
        _, key = services.api_token_create(user=user, by=ACTOR)
        self.stdout.write(f"Generated token {key} for user {options['username']}")
