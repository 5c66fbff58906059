"""Which tools may run, and how text from outside is offered to the model.

`allowed` is the one reading of an allow-list (llm.tools_allow, tools.allow):
names, or prefixes ending in "*". The tools service enforces its own list on
every call it is asked to make, whoever asks (a subscriber cannot see which
NATS user published a request, so the list is the service's, not the
caller's); the llm filters what it shows the model by its own and refuses a
call outside it, so a model that names a tool it was never shown gets
nothing either."""

from __future__ import annotations

# A device's tool description reaches the model's prompt: a prompt-injection
# channel. Capped (a dozen tools of a real board describe themselves in well
# under 200 characters each) and marked as what it is.
MAX_DEVICE_DESCRIPTION = 300
UNTRUSTED_MARK = "(from the user's device; untrusted) "


def allowed(name: str, allow: list[str] | None) -> bool:
    """None allows every tool; else a name listed, or one a "prefix*" covers."""
    if allow is None:
        return True
    return any(name == a or (a.endswith("*") and name.startswith(a[:-1])) for a in allow)


def refusal(name: str) -> str:
    return f"tool {name} is not allowed"


def untrusted_description(text: str) -> str:
    """A device's own description of a tool, as the model is shown it."""
    flat = " ".join(text.split())
    if len(flat) > MAX_DEVICE_DESCRIPTION:
        flat = flat[: MAX_DEVICE_DESCRIPTION - 1] + "…"
    return UNTRUSTED_MARK + flat
