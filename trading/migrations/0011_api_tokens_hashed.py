"""API tokens move from DRF's authtoken table (the key in plain text, as the primary key) to django-rest-knox's
(a SHA-512 digest and a 15-character lookup prefix): each old key becomes a knox token whose digest matches it, so
scripts keep their `Authorization: Token <key>`; then the plain-text table is dropped. Not reversible: the keys are
gone."""

from django.conf import settings
from django.db import migrations
from django.utils import timezone


def hash_legacy_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if "authtoken_token" not in connection.introspection.table_names():
        return  # a database that never had DRF's tokens (or already migrated)
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS

    AuthToken = apps.get_model("knox", "AuthToken")
    ttl = settings.API_TOKEN_TTL  # the old keys sat in plain text (and in backups): they expire like new ones
    expiry = timezone.now() + ttl if ttl is not None else None
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, user_id, created FROM authtoken_token")
        rows = cursor.fetchall()
    for key, user_id, created in rows:
        digest = hash_token(key)
        AuthToken(digest=digest, token_key=key[:CONSTANTS.TOKEN_KEY_LENGTH], user_id=user_id,
                  expiry=expiry).save(force_insert=True)
        AuthToken.objects.filter(digest=digest).update(created=created)  # created is auto_now_add
    schema_editor.execute(f"DROP TABLE {schema_editor.quote_name('authtoken_token')}")


class Migration(migrations.Migration):

    dependencies = [
        ("trading", "0010_venue_health_snapshot"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [
        migrations.RunPython(hash_legacy_tokens, migrations.RunPython.noop, elidable=True),
    ]
