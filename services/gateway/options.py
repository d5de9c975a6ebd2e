"""What an agent offers for modes and models, read from its answers.

Pure functions of the lists an agent returned: config options (preferred), the legacy
`modes` object and the legacy `models` object.
"""

from __future__ import annotations

from typing import Any, Literal

ModelChoice = tuple[Literal["config", "legacy"], str | None, list[str]]


def option_values(opt: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for entry in opt.get("options") or []:
        if not isinstance(entry, dict):
            continue
        if "value" in entry:
            values.append(str(entry["value"]))
        # grouped options
        values.extend(
            str(sub["value"])
            for sub in entry.get("options") or []
            if isinstance(sub, dict) and "value" in sub
        )
    return values


def config_options_of(result: Any) -> list[dict[str, Any]] | None:
    """The complete option list in an agent's answer, when it carries one."""
    if isinstance(result, dict) and isinstance(result.get("configOptions"), list):
        return [o for o in result["configOptions"] if isinstance(o, dict)]
    return None


def _is_model(opt: dict[str, Any]) -> bool:
    return opt.get("id") == "model" or opt.get("category") == "model"


def current_model(
    config_options: list[dict[str, Any]], legacy: dict[str, Any] | None
) -> str | None:
    for opt in config_options:
        if _is_model(opt) and isinstance(opt.get("currentValue"), str):
            return str(opt["currentValue"])
    if legacy and isinstance(legacy.get("currentModelId"), str):
        return str(legacy["currentModelId"])
    return None


def model_choice(
    config_options: list[dict[str, Any]], legacy: dict[str, Any] | None
) -> ModelChoice | None:
    """How an agent switches models: ("config", id, values) or ("legacy", None, ids)."""
    for opt in config_options:
        if _is_model(opt):
            return ("config", str(opt.get("id")), option_values(opt))
    if legacy and isinstance(legacy.get("availableModels"), list):
        ids = [
            str(m.get("modelId"))
            for m in legacy["availableModels"]
            if isinstance(m, dict)
        ]
        return ("legacy", None, ids)
    return None


def mode_option(config_options: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The agent's `mode` config option, preferred over legacy modes."""
    for opt in config_options:
        if opt.get("category") == "mode" or opt.get("id") == "mode":
            return opt
    return None


def mode_ids(
    config_options: list[dict[str, Any]], modes: dict[str, Any] | None
) -> list[str] | None:
    option = mode_option(config_options)
    if option is not None:
        return option_values(option) or None
    if modes and isinstance(modes.get("availableModes"), list):
        return [
            str(m.get("id")) for m in modes["availableModes"] if isinstance(m, dict)
        ]
    return None
