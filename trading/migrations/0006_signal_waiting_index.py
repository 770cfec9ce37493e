
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('trading', '0005_signal_lean_indexes'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='signal',
            index=models.Index(condition=models.Q(('status', 'received')), fields=['strategy', 'received_at'], name='signal_waiting_by_strategy'),
        ),
    ]
