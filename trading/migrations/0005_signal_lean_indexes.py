import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('trading', '0004_order_working_index'),
    ]

    # The new unique constraint is built before the old unique index goes, so uniqueness never lapses. The signal
    # table loses two indexes intake paid for on every INSERT: strategy_id alone (covered by the (strategy_id,
    # -received_at) index) and idempotency_key's varchar_pattern_ops copy (nothing matches keys with LIKE).
    operations = [
        migrations.AddConstraint(
            model_name='signal',
            constraint=models.UniqueConstraint(fields=('idempotency_key',), name='signal_idempotency_key_unique'),
        ),
        migrations.AlterField(
            model_name='signal',
            name='idempotency_key',
            field=models.CharField(max_length=200),
        ),
        migrations.AlterField(
            model_name='signal',
            name='strategy',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='signals', to='trading.strategy'),
        ),
    ]
