"""The promotion rules: which model version may hold ``production``, decided in one place.

Every path that moves ``production`` — ``registry promote`` (the DAG's promote task and the
CLI), ``registry rollback`` (the ``model_rollback`` DAG and the CLI) — asks :func:`refusal` under
the model's registry lock and moves nothing when it answers. A version may hold production when:

- it passed its gate (tag ``llmops.gate_passed``);
- no human rejected it (``llmops.approval`` is not ``rejected``; a rejection is final);
- a human approved it, or its approval was waived where the deployment allows waivers
  (``LLMOPS_ALLOW_APPROVAL_WAIVER``); a rollback target with neither is refused;
- its gate ran the deployment's standard policy, or the deployment allows other policies
  (``LLMOPS_ALLOW_GATE_OVERRIDE``).

The deployment settings are environment variables of the workers (see ``settings``), so whoever
triggers a DAG run cannot grant an exception with a Param. An exception that was allowed is
named in tag ``llmops.exceptions``, in the audit log, on the model card and the approvals page.
"""

from __future__ import annotations

import json
from typing import Any

from llmops_tasks.core import settings

APPROVED = "approved"
REJECTED = "rejected"
WAIVED = "waived"
DECISIONS = (APPROVED, REJECTED, WAIVED)


def _true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def gate_overrides(tags: dict[str, str]) -> dict[str, Any]:
    """The thresholds a version's gate used that differ from the standard policy ({} if none)."""
    try:
        overrides = json.loads(tags.get("llmops.gate_overrides") or "{}")
    except ValueError:
        return {"unreadable": tags.get("llmops.gate_overrides")}
    return overrides if isinstance(overrides, dict) else {}


def gate_is_standard(tags: dict[str, str]) -> bool:
    """Whether the version's gate ran the standard policy. A version registered before the tag
    existed has none: it is taken as standard (its gate ran the packaged policy then)."""
    return tags.get("llmops.gate_policy_standard", "true") != "false"


def describe_overrides(overrides: dict[str, Any]) -> str:
    parts = []
    for name, change in overrides.items():
        if isinstance(change, dict) and "value" in change:
            parts.append(f"{name}={change['value']} (standard {change.get('standard')})")
        else:
            parts.append(f"{name}={change}")
    return ", ".join(parts)


def gate_refusal(decision: dict[str, Any]) -> str | None:
    """Why a gate decision may not lead to a registered candidate, or ``None``: a non-standard
    policy where the deployment does not allow one."""
    if decision.get("policy_standard", True) or settings.deployment_allows(settings.ALLOW_GATE_OVERRIDE):
        return None
    return (f"its gate ran a non-standard policy ({describe_overrides(decision.get('overrides') or {})}) and "
            f"this deployment allows only its standard gate policy ({settings.gate_policy()}); "
            f"set {settings.ALLOW_GATE_OVERRIDE}=true in the deployment to allow other policies")


def waiver_refusal() -> str | None:
    """Why an approval may not be waived here, or ``None`` when the deployment allows waivers."""
    if settings.deployment_allows(settings.ALLOW_APPROVAL_WAIVER):
        return None
    return (f"this deployment requires a human approval before production; set {settings.ALLOW_APPROVAL_WAIVER}=true "
            "in the deployment to allow waiving it")


def exceptions(tags: dict[str, str]) -> list[str]:
    """The governance exceptions a version carries, as sentences (empty: none)."""
    found = []
    if tags.get("llmops.approval") == WAIVED:
        found.append(f"approval waived by {tags.get('llmops.approval_by') or '?'} "
                     f"(deployment allows waivers: {settings.ALLOW_APPROVAL_WAIVER})")
    if not gate_is_standard(tags):
        found.append(f"non-standard gate policy: {describe_overrides(gate_overrides(tags))} "
                     f"(deployment allows it: {settings.ALLOW_GATE_OVERRIDE})")
    return found


def refusal(tags: dict[str, str], *, require_decision: bool) -> str | None:
    """Why the version with these tags may not hold ``production``, or ``None`` when it may.

    :param require_decision: refuse a version with no approval decision at all (a rollback
        target); a promotion records the promoting person's approval first instead.
    """
    if not _true(tags.get("llmops.gate_passed")):
        return "it has no passed gate decision"
    approval = tags.get("llmops.approval", "")
    if approval == REJECTED:
        comment = tags.get("llmops.approval_comment", "")
        return (f"{tags.get('llmops.approval_by') or 'someone'} rejected it at {tags.get('llmops.approval_at') or '?'}"
                + (f" ({comment})" if comment else "") + "; a rejected version never reaches production")
    if approval == WAIVED and (why := waiver_refusal()):
        return f"its approval was waived, and {why}"
    if not approval and require_decision:
        return "it was never approved (nor its approval waived)"
    if not gate_is_standard(tags) and not settings.deployment_allows(settings.ALLOW_GATE_OVERRIDE):
        return (f"its gate ran a non-standard policy ({describe_overrides(gate_overrides(tags))}) and this "
                f"deployment does not allow that; set {settings.ALLOW_GATE_OVERRIDE}=true to allow it")
    return None
