"""Config options: which one a `session/set_config_option` names and what the agent gets.

The agent reports its complete option list in the session/new (or load/resume) result,
in `config_option_update` and in the set_config_option result; the session actor
(live.py) keeps the latest and stores it on the session row, which the read side shows
as the context's `configOptions`.
"""

from __future__ import annotations

from typing import Any

from services.gateway.options import option_values
from shared.errors import BadRequest


def find_option(config_options: list[dict[str, Any]], config_id: str) -> dict[str, Any]:
    for opt in config_options:
        if opt.get("id") == config_id:
            return opt
    offered = ", ".join(str(o.get("id")) for o in config_options) or "none"
    raise BadRequest(
        f"Invalid configId: {config_id!r} is not offered by the agent ({offered})"
    )


def request_params(
    routa_agent_id: str | None, option: dict[str, Any], value: str | bool
) -> dict[str, Any]:
    """The agent's params; -32602 naming value when it does not fit the option."""
    params: dict[str, Any] = {
        "sessionId": routa_agent_id,
        "configId": str(option.get("id")),
    }
    if option.get("type") == "boolean":
        if not isinstance(value, bool):
            raise BadRequest("Invalid value: the option is boolean (true or false)")
        params["type"] = "boolean"
    elif isinstance(value, bool):
        raise BadRequest("Invalid value: the option takes a string")
    elif option.get("type") == "select":
        values = option_values(option)
        if values and value not in values:
            raise BadRequest(
                f"Invalid value: {value!r} is not offered ({', '.join(values)})"
            )
    params["value"] = value
    return params
