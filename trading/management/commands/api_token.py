"""`manage.py api_token create USER [--days N | --no-expiry]`, `api_token list [USER]`,
`api_token revoke PREFIX | --user USER`: API tokens, whose keys are shown once, at creation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from trading import selectors, services

ACTOR = "command:api_token"


def user_get(username: str) -> Any:
    """The user of this name, or a CommandError."""
    try:
        return get_user_model().objects.get_by_natural_key(username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"no user named {username!r}", returncode=2) from None


class Command(BaseCommand):
    help = ("Create, list and revoke API tokens (`Authorization: Token <key>`). `create` prints the key alone on "
            "stdout, once: only its digest is stored.")

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="issue a token and print its key (once)")
        create.add_argument("username")
        expiry = create.add_mutually_exclusive_group()
        expiry.add_argument("--days", type=int, help="days until it expires (default: API_TOKEN_TTL_DAYS)")
        expiry.add_argument("--no-expiry", action="store_true", help="never expires")
        listing = sub.add_parser("list", help="tokens by prefix, user, creation and expiry (never a key)")
        listing.add_argument("username", nargs="?")
        revoke = sub.add_parser("revoke", help="revoke a token by its prefix, or every token of a user")
        target = revoke.add_mutually_exclusive_group(required=True)
        target.add_argument("prefix", nargs="?", help="the key's first 8 to 15 characters")
        target.add_argument("--user", metavar="USERNAME", help="every token of this user")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _create(self, options: dict[str, Any]) -> None:
        ttl: Any = services._DEFAULT_TTL
        if options["no_expiry"]:
            ttl = None
        elif options["days"] is not None:
            if options["days"] <= 0:
                raise CommandError("--days must be a positive number of days (or use --no-expiry)", returncode=2)
            ttl = timedelta(days=options["days"])
        try:
            token, key = services.api_token_create(user=user_get(options["username"]), by=ACTOR, ttl=ttl)
        except ValidationError as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(key)
        expiry = f"expires {token.expiry:%Y-%m-%d %H:%M} UTC" if token.expiry else "never expires"
        self.stderr.write(f"token {key[:services.TOKEN_PREFIX_LENGTH]}… of {options['username']}: {expiry}. The key "
                          f"above is shown this once (only its digest is stored).")

    def _list(self, options: dict[str, Any]) -> None:
        user = user_get(options["username"]) if options["username"] else None
        now = timezone.now()
        rows = [("PREFIX", "USER", "CREATED", "EXPIRES", "STATE")]
        for token in selectors.api_token_list(user=user):
            rows.append((token.token_key[:services.TOKEN_PREFIX_LENGTH], token.user.get_username(),
                         f"{token.created:%Y-%m-%d %H:%M}",
                         f"{token.expiry:%Y-%m-%d %H:%M}" if token.expiry else "never",
                         "expired" if token.expiry and token.expiry <= now else "active"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())

    def _revoke(self, options: dict[str, Any]) -> None:
        if options["user"]:
            tokens = list(selectors.api_token_list(user=user_get(options["user"])))
        else:
            found = selectors.api_token_find(prefix=options["prefix"])
            if found is None:
                raise CommandError(f"no single token has the prefix {options['prefix']!r} (give 8 to 15 characters)",
                                   returncode=2)
            tokens = [found]
        for token in tokens:
            services.api_token_revoke(token=token, by=ACTOR)
        self.stdout.write(f"revoked {len(tokens)} token(s)")
