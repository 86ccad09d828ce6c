"""The base of every `manage.py` command that changes what the audit log covers."""

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import acting_as, command_actor


class AuditedCommand(BaseCommand):
    """A command whose changes are recorded as made by its run: "command:<name> by <OS user>".

    Pass `self.actor` to the services the command calls; services reached through helpers that
    take no actor record it too (`audit.services.acting_as`), rather than "system".
    """

    @property
    def actor(self) -> str:
        # Django names a command after its module (<app>/management/commands/<name>.py).
        return command_actor(type(self).__module__.rpartition(".")[2])

    def execute(self, *args: Any, **options: Any) -> str | None:
        with acting_as(self.actor):
            return super().execute(*args, **options)
