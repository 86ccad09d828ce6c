"""Every Lua script the project runs on Redis, defined once, and the one way to run one.

A script is its file's text, after the files it includes (functions it shares with other
scripts: Redis runs one chunk of Lua per script, with no require), and is called by its SHA-1
with EVALSHA; a NOSCRIPT reply (Redis restarted or was flushed since the script was loaded)
loads it and calls again. `run` does that on a synchronous client, `run_async` on an asyncio
one; the gateway's ScriptBatcher (gateway/batching.py) sends the same EVALSHA in pipelines and
loads every script it has sent at once on NOSCRIPT.

The scripts stay beside the code that owns their keys (gateway/lua, metering/lua); this module
only reads their files, so the meter (metering/consumer.py) can use it without importing the
gateway.
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

_GATEWAY_LUA = Path(__file__).resolve().parent.parent / "gateway" / "lua"
_METERING_LUA = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: str
    sha: str

    @classmethod
    def from_files(cls, directory: Path, name: str, *, include: tuple[str, ...] = ()) -> "Script":
        """<directory>/<name>.lua, after the files named in `include` (same directory)."""
        text = "\n".join((directory / f"{part}.lua").read_text() for part in (*include, name))
        return cls(name, text, hashlib.sha1(text.encode()).hexdigest())  # noqa: S324 (Redis' id)


def _registry(*scripts: Script) -> Mapping[str, Script]:
    return {script.name: script for script in scripts}


# name -> script. The name is its file's; a script's keys and arguments are described at the
# top of its file.
SCRIPTS: Mapping[str, Script] = _registry(
    # Per-account and per-project limits (gateway/limits.py; limits_peek also
    # console/selectors.py).
    Script.from_files(_GATEWAY_LUA, "limits_admit", include=("limits_lib",)),
    Script.from_files(_GATEWAY_LUA, "limits_settle", include=("limits_lib",)),
    Script.from_files(_GATEWAY_LUA, "limits_peek"),
    # The admission queue (gateway/queueing.py).
    Script.from_files(_GATEWAY_LUA, "queue_enter", include=("queue_lapsed",)),
    Script.from_files(_GATEWAY_LUA, "queue_leave", include=("queue_lapsed",)),
    # The in-flight journal (gateway/inflight.py), on the keys of metering/events.py.
    Script.from_files(_GATEWAY_LUA, "inflight_open"),
    Script.from_files(_GATEWAY_LUA, "inflight_settle"),
    Script.from_files(_GATEWAY_LUA, "inflight_drop"),
    Script.from_files(_GATEWAY_LUA, "inflight_renew"),
    Script.from_files(_GATEWAY_LUA, "inflight_reap"),
    # The meter's consumer group (metering/consumer.py).
    Script.from_files(_METERING_LUA, "meter_forget"),
    # Prepaid credit movements added to the balance once each (billing/credits.py).
    Script.from_files(_METERING_LUA, "credit_apply"),
)


def run(client: redis.Redis, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """The script's reply, run by EVALSHA, loading it first if Redis lacks it."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.text)
        return client.evalsha(script.sha, len(keys), *keys, *args)


async def run_async(
    client: aioredis.Redis, script: Script, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """`run` on an asyncio client."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script.text)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


async def load_async(client: aioredis.Redis, scripts: Iterable[Script]) -> None:
    """Load the scripts into Redis (SCRIPT LOAD), one after the other."""
    for script in scripts:
        await client.script_load(script.text)
