"""Synthetic support traffic with known properties, for the monitoring tests and bench: prompts and
answers drawn from one template family (the "training" distribution), and the changes monitoring
must notice (longer prompts, another language, leaked PII or secrets, unhappy users)."""

from __future__ import annotations

import random
from pathlib import Path

VERBS = ("reset", "change", "update", "recover", "delete", "export", "verify", "link", "unlock", "renew")
NOUNS = ("password", "email address", "account", "invoice", "subscription", "profile", "phone number",
         "payment method", "username", "billing plan", "order", "shipping address")
OPENERS = ("How do I", "How can I", "What is the way to", "Where can I", "Can you tell me how to", "Help me")
TAILS = ("", "", " please", " today", " from my phone", " on the website", " without logging in")
RU_OPENERS = ("Как же мне", "Как я могу", "А как мне это", "Где я могу", "Ты не скажешь как мне", "Помоги мне")
RU_VERBS = ("сбросить", "изменить", "обновить", "вернуть", "удалить", "выгрузить", "проверить", "привязать",
            "открыть", "продлить")
RU_NOUNS = ("пароль", "адрес почты", "аккаунт", "счёт", "подписку", "профиль", "номер телефона", "способ оплаты",
            "логин", "тариф", "заказ", "адрес доставки")
RU_TAILS = ("", "", " пожалуйста", " сегодня", " с моего телефона", " на вашем сайте", " без входа туда")


def prompt(rng: random.Random) -> str:
    return f"{rng.choice(OPENERS)} {rng.choice(VERBS)} my {rng.choice(NOUNS)}{rng.choice(TAILS)}?"


def answer(rng: random.Random, question: str = "") -> str:
    noun = rng.choice(NOUNS)
    return (f"Open Settings, choose {noun.title()} and follow the steps to {rng.choice(VERBS)} it."
            + rng.choice(("", " It takes a minute.", " You will get a confirmation.")))


def long_prompt(rng: random.Random) -> str:
    """Four questions of the training kind in one prompt: longer, with no new word."""
    return " ".join(prompt(rng) for _ in range(4))


def russian_prompt(rng: random.Random) -> str:
    """The same questions in Russian, of about the same length: only the language changes."""
    return f"{rng.choice(RU_OPENERS)} {rng.choice(RU_VERBS)} мой {rng.choice(RU_NOUNS)}{rng.choice(RU_TAILS)}?"


def pii_answer(rng: random.Random) -> str:
    user = rng.choice(("jane.doe", "sam.lee", "ana.ruiz"))
    return f"Write to {user}@example.com or call +1 415 555 0{rng.randint(100, 999)} for help."


HOUR_MS = 3600 * 1000
SECRET_ANSWER = "Use the admin key AKIAIOSFODNN7EXAMPLE to reset it."


def training_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": prompt(rng), "completion": answer(rng)} for _ in range(n)]


def prediction_rows(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question = prompt(rng)
        rows.append({"prompt": question, "reference": answer(rng), "prediction": answer(rng)})
    return rows


def register_production(folder: Path, model: str, client, version_tags: dict | None = None) -> str:
    """A version in production with the lineage `llmops registry register` writes: its training run names
    the training data; the evaluate step run of the same DAG run holds the eval predictions."""
    from llmops_tasks.core import data, tracking

    train_file = folder / "train_sft.jsonl"
    data.write_jsonl(str(train_file), training_rows(400))
    predictions = folder / "predictions_candidate.jsonl"
    data.write_jsonl(str(predictions), prediction_rows(300))
    experiment = tracking.experiment_id(client)
    train_run = client.create_run(experiment, run_name="train-sft").info.run_id
    client.log_param(train_run, "train_data", str(train_file))
    evaluate = client.create_run(experiment, run_name="evaluate", tags={
        tracking.TAG_STEP: "evaluate", tracking.TAG_DAG_ID: "llm_retraining", tracking.TAG_RUN_ID: "run-1"}).info.run_id
    client.log_artifact(evaluate, str(predictions), artifact_path="evaluation")
    client.create_registered_model(model)
    (folder / "weights").mkdir()
    version = client.create_model_version(model, str(folder / "weights"), tags={
        "llmops.train_mlflow_run": train_run, "llmops.dag_id": "llm_retraining", "llmops.dag_run_id": "run-1",
        "llmops.gate_passed": "true", **(version_tags or {})}).version
    client.set_registered_model_alias(model, "production", str(version))
    return str(version)


def write_window(experiment: str, model: str, end_ms: int, rng: random.Random, n: int = 30, *, question=None,
                  reply=None, thumbs_down: int = 0, thumbs_up: int = 0, corrections: int = 0) -> list[str]:
    import mlflow

    from llmops_tasks.serving import traces

    question = question or prompt
    ids = []
    start = end_ms - HOUR_MS
    for i in range(n):
        at = start + int((i + 0.5) * HOUR_MS / n)
        text = question(rng)
        text_out = reply(rng, i) if reply else answer(rng)
        ids.append(traces.record_answer(
            prompt=text, answer=text_out, model_name=model, model_version="1", model_uri=f"models:/{model}@production",
            tokens_in=len(text.split()), tokens_out=len(text_out.split()), start_ns=at * 1_000_000,
            end_ns=(at + rng.randint(200, 900)) * 1_000_000, experiment_id=experiment))
    for trace_id in ids[:thumbs_down]:
        mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=False)
    for trace_id in ids[thumbs_down:thumbs_down + thumbs_up]:
        mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=True)
    for trace_id in ids[:corrections]:
        mlflow.log_expectation(trace_id=trace_id, name="user_correction", value="Go to Settings > Security.")
    return ids
