"""Decode power as a curve in the batch (watts at 1, 2, 4, ... 256 sequences) instead of a
power, a log term and, for a model with a decode step's time, a price per output token.

An existing row's curve is its old model at each of those batch sizes: decode_watts +
decode_log_watts x ln(batch) + decode_j_per_token x the tokens a second a step over that batch
makes, where the step's time is known (its price per token then moves into the curve and is
set to 0); without a step's time the price per token stays as it was.
"""

import django.contrib.postgres.fields
from django.db import migrations, models

TO_CURVE = """
UPDATE metering_energycalibration SET
    decode_curve = ARRAY(
        SELECT decode_watts + decode_log_watts * ln(2 ^ j)
               + CASE WHEN decode_step_seconds > 0
                      THEN decode_j_per_token * 2 ^ j
                           / (decode_step_seconds + decode_step_seconds_per_sequence * 2 ^ j)
                      ELSE 0 END
        FROM generate_series(0, 8) AS j
        ORDER BY j
    ),
    decode_j_per_token = CASE WHEN decode_step_seconds > 0 THEN 0 ELSE decode_j_per_token END
"""
# Back to a flat decode power: the curve's value at one sequence.
FROM_CURVE = "UPDATE metering_energycalibration SET decode_watts = decode_curve[1]"


class Migration(migrations.Migration):

    dependencies = [
        ("metering", "0013_energy_decode_step_seconds"),
    ]

    operations = [
        migrations.AddField(
            model_name="energycalibration",
            name="decode_curve",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.FloatField(), default=list, size=9
            ),
        ),
        migrations.RunSQL(TO_CURVE, FROM_CURVE),
        migrations.RemoveField(model_name="energycalibration", name="decode_log_watts"),
        migrations.RemoveField(model_name="energycalibration", name="decode_watts"),
        migrations.RenameField(
            model_name="energycalibration", old_name="decode_curve", new_name="decode_watts"
        ),
        migrations.AlterField(
            model_name="energycalibration",
            name="decode_watts",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.FloatField(), size=9
            ),
        ),
    ]
