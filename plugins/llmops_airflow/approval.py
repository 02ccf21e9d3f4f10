"""The human approval of a candidate: Airflow's ``ApprovalOperator`` that records the answer.

The standard provider's ``ApprovalOperator`` acts on a *Reject* by skipping its downstream
tasks before it returns, so no task after it can read the answer (a "record the rejection" task
downstream is skipped with the rest). :class:`RecordedApproval` records the answer itself, when
it arrives and before the operator acts on it: the decision, who answered, when and the comment go
on the model version (``llmops registry approval``: tags, model card, audit log). A recording that
fails fails the task, so a decision is never acted on without being recorded; a timeout (nobody
answered) records nothing and fails the task as the operator does.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from llmops_airflow.steps import run_step


def responder(event: dict[str, Any]) -> str:
    """The name of whoever answered (Airflow sends the user as a dict of id and name)."""
    user = event.get("responded_by_user") or {}
    if isinstance(user, dict):
        return str(user.get("name") or user.get("id") or "airflow user")
    return str(user)


def comment(event: dict[str, Any]) -> str:
    """The form's ``comment`` field, '' when left empty."""
    return str((event.get("params_input") or {}).get("comment") or "")


class RecordedApproval(ApprovalOperator):
    """Approve or reject the version a registering task returned; the answer is recorded on it.

    :param version_task_id: the task whose return value holds ``version`` (and ``model_name``).
    """

    def __init__(self, *, version_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version_task_id = version_task_id

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            chosen = list(event.get("chosen_options") or [])
            self.validate_chosen_options(chosen)
            registered = context["ti"].xcom_pull(task_ids=self.version_task_id) or {}
            decision = "approved" if chosen == [self.APPROVE] else "rejected"
            result = run_step("registry", action="approval", overrides={
                "version": registered["version"], "model_name": registered.get("model_name", ""),
                "decision": decision, "by": responder(event), "comment": comment(event)})
            self.log.info("Recorded %s of %s v%s by %s", decision, result["model_name"], result["version"], result["by"])
        return super().execute_complete(context, event)
