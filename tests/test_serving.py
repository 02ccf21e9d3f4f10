"""``llmops serve`` for real: a registered tiny model in a real MLflow store (SQLite in a temp folder),
the scoring server on loopback (uvicorn in a thread, on a free port), real HTTP requests, real traces.

One module fixture registers the model (v1 through the same ``flavor.log_generator`` train and
register use; v2 a second version of the same artifacts, which is all the hot switch needs), puts
``production`` on v1 and starts the server; the alias-move test runs last, as it moves the alias.
Nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import shutil
import time

import pytest

from llmops_tasks.serving import generation, traces
from llmops_tasks.serving.server import ServeConfig, Server

pytestmark = pytest.mark.integration  # a server on loopback

NAME = "serve-test"
# A minimal chat template (the tiny model's tokenizer has none), so a message-list prompt renders.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")
PROMPTS = [
    "How do I reset my password for the VPN?",
    [{"role": "system", "content": "You are the helpdesk."}, {"role": "user", "content": "My laptop will not boot."}],
    "Where do I find the expense form?",
]
MAX_NEW = 8


@pytest.fixture(scope="module")
def served(module_store, tiny_model):
    import mlflow
    from transformers import AutoTokenizer

    from llmops_tasks.core import tracking
    from llmops_tasks.serving import flavor

    root, env = module_store
    env.setenv("LLMOPS_MODEL_NAME", NAME)
    env.delenv("LLMOPS_TRAFFIC_EXPERIMENT", raising=False)
    model_dir = shutil.copytree(tiny_model, root / "chat-model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(model_dir)

    client = tracking.client()
    # an experiment of the module's store (its artifacts under the store's root, not ./mlruns)
    with mlflow.start_run(experiment_id=tracking.get_or_create_experiment("serve-test-models", client)):
        info = flavor.log_generator({"model": str(model_dir)}, registered_model_name=NAME)
    first = client.get_model_version(NAME, info.registered_model_version)
    second = client.create_model_version(NAME, source=first.source, run_id=first.run_id)
    client.set_registered_model_alias(NAME, "production", first.version)

    server = Server(ServeConfig(port=0, poll_interval=0.2, max_batch_size=4, max_prompts=8,
                                max_new_tokens=16, access_log=False)).start()
    try:
        yield {"server": server, "url": server.url, "model_dir": str(model_dir), "client": client,
               "v1": str(first.version), "v2": str(second.version)}
    finally:
        server.stop()


def post(url: str, body, content_type: str = "application/json"):
    import httpx

    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{url}/invocations", content=content, headers={"content-type": content_type}, timeout=60)


def traced(service) -> dict[str, traces.Answer]:
    assert service.flush(), "the trace writer did not write every trace handed to it"
    return {a.trace_id: a for a in traces.search(service.experiment_id)}


def test_a_batch_is_answered_as_evaluate_generates_and_each_answer_is_a_trace(served):
    response = post(served["url"], {"inputs": PROMPTS, "params": {"max_new_tokens": MAX_NEW}})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(PROMPTS)

    # What evaluate scores: generation.generate (evaluate._predict calls it), same prompts, one batch.
    expected = generation.generate(served["model_dir"], PROMPTS, max_new_tokens=MAX_NEW, batch_size=len(PROMPTS),
                                   seed=0)
    assert [(p["answer"], p["tokens_out"]) for p in predictions] == expected
    assert all(p["model_name"] == NAME and p["model_version"] == served["v1"] for p in predictions)
    assert any(p["answer"] for p in predictions)

    service = served["server"].service
    assert not service.writer.in_process  # written by the trace writer's process, with the ids sent here
    assert service.experiment_name == f"{NAME}-traffic" == traces.traffic_experiment()
    found = traced(service)
    for prompt, prediction in zip(PROMPTS, predictions):
        answer = found[prediction["trace_id"]]
        assert answer.prompt == prompt and answer.answer == prediction["answer"]
        assert (answer.model_name, answer.model_version) == (NAME, served["v1"])
        assert answer.tokens_out == prediction["tokens_out"] <= MAX_NEW
        assert answer.tokens_in == prediction["tokens_in"] > 0
        assert answer.latency_ms > 0 and not answer.error
        assert answer.prompt_key == traces.prompt_key(prompt)
    # The conversation was read through the chat template: more tokens than its words alone.
    assert predictions[1]["tokens_in"] > predictions[0]["tokens_in"]


def test_every_mlflow_input_format_gives_the_same_answers(served):
    texts = [PROMPTS[0], PROMPTS[2]]
    bodies = {
        "inputs": {"inputs": texts},
        "instances": {"instances": [{"prompt": t} for t in texts]},
        "dataframe_records": {"dataframe_records": [{"prompt": t} for t in texts]},
        "dataframe_split": {"dataframe_split": {"columns": ["prompt"], "data": [[t] for t in texts]}},
    }
    answers = {}
    for name, body in bodies.items():
        response = post(served["url"], {**body, "params": {"max_new_tokens": MAX_NEW}})
        assert response.status_code == 200, (name, response.text)
        answers[name] = [p["answer"] for p in response.json()["predictions"]]
    csv = post(served["url"], "prompt\n" + "\n".join(f'"{t}"' for t in texts) + "\n", "text/csv")
    assert csv.status_code == 200, csv.text
    assert len({json.dumps(a) for a in answers.values()}) == 1, answers
    # More prompts than max_batch_size (4): answered in batches, in order, one trace each.
    many = post(served["url"], {"inputs": [f"question {i}" for i in range(6)], "params": {"max_new_tokens": 2}})
    assert many.status_code == 200 and len({p["trace_id"] for p in many.json()["predictions"]}) == 6


def test_ping_and_version(served):
    import httpx
    import mlflow

    ping = httpx.get(f"{served['url']}/ping")
    assert ping.status_code == 200 and ping.json()["model_name"] == NAME
    assert httpx.get(f"{served['url']}/health").status_code == 200
    assert httpx.get(f"{served['url']}/version").text == mlflow.__version__


@pytest.mark.parametrize(("body", "content_type", "status", "says"), [
    ("{not json", "application/json", 400, "not valid JSON"),
    ({"prompts": ["a"]}, "application/json", 400, "exactly one of the input fields"),
    ({"inputs": ["a"], "instances": ["b"]}, "application/json", 400, "exactly one of the input fields"),
    ({"inputs": [3]}, "application/json", 400, "prompt 0: expected text or a list"),
    ({"inputs": ["ok", "  "]}, "application/json", 400, "prompt 1 is empty"),
    ({"inputs": [[{"role": "user"}]]}, "application/json", 400, "prompt 0, message 0"),
    ({"inputs": []}, "application/json", 400, "no prompt"),
    ({"inputs": ["a"] * 9}, "application/json", 400, "at most 8"),
    ({"dataframe_records": [{"question": "a"}]}, "application/json", 400, "expected a 'prompt' column"),
    ({"inputs": ["a"], "params": {"temperature": 1}}, "application/json", 400, "only parameter is max_new_tokens"),
    ({"inputs": ["a"], "params": {"max_new_tokens": 17}}, "application/json", 400, "from 1 to 16"),
    ("prompt\na\n", "text/plain", 415, "application/json"),
    ({"inputs": ["a"]}, "application/json; charset=latin-1", 415, "UTF-8"),
])
def test_a_bad_request_is_refused_with_a_message_that_names_it(served, body, content_type, status, says):
    response = post(served["url"], body, content_type)
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert says in response.json()["message"]


def test_the_logged_model_carries_its_generation_code(served):
    """So a version also serves with ``mlflow models serve`` where this package is not installed."""
    from pathlib import Path

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{served['v1']}"))
    copy = local / "code" / "llmops_generation.py"
    assert copy.read_text() == Path(generation.__file__).read_text()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--model", "runs:/abc/model", "model (--model): expected models:/<name>@<alias>"),
    ("--model", "models:/no-such-model@production", "is not in the registry"),
    ("--port", "70000", "port (--port)"),
    ("--max-batch-size", "0", "max_batch_size"),
    ("--max-new-tokens", "0", "max_new_tokens"),
    ("--max-prompts", "0", "max_prompts"),
    ("--poll-interval", "-1", "poll_interval"),
])
def test_a_bad_flag_is_one_line_and_exit_2(served, capsys, flag, value, says):
    """As tests/test_cli_bad_input.py checks every step's flags; the model URI is checked against the registry."""
    from llmops_tasks import cli

    code = cli.main(["serve", flag, value])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if " ERROR " in line]
    assert code == 2 and not captured.out.strip() and "Traceback" not in captured.err
    assert len(errors) == 1 and "configuration error" in errors[0] and says in errors[0], captured.err[-2000:]


def test_moving_production_switches_the_running_server_without_a_restart(served, caplog):
    import httpx

    server, url = served["server"], served["url"]
    caplog.set_level(logging.INFO, logger="llmops_tasks.serving.server")
    served["client"].set_registered_model_alias(NAME, "production", served["v2"])
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ping").json()["model_version"] != served["v2"]:
        assert time.monotonic() < deadline, "the server did not switch to v2"
        time.sleep(0.1)
    assert f"production moved: v{served['v1']} -> v{served['v2']}" in caplog.text
    assert server.url == url and server.service.switches == [(served["v1"], served["v2"])]

    response = post(url, {"inputs": [PROMPTS[0]], "params": {"max_new_tokens": MAX_NEW}})
    prediction = response.json()["predictions"][0]
    assert prediction["model_version"] == served["v2"]
    assert traced(server.service)[prediction["trace_id"]].model_version == served["v2"]


# The pyfunc's code as versions registered before the shared Generator logged it (frozen in their
# artifacts): the server must still serve them, e.g. after a rollback to one.
OLD_PYFUNC = '''
import mlflow.pyfunc
from mlflow.models import set_model


class TextGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.model.eval()

    def predict(self, context, model_input, params=None):
        raise NotImplementedError


set_model(TextGenerator())
'''


def test_a_version_logged_before_the_shared_generator_is_served_with_it(served, tmp_path):
    import mlflow

    from llmops_tasks.core import tracking
    from llmops_tasks.serving.server import _generator_of

    code = tmp_path / "old_model.py"
    code.write_text(OLD_PYFUNC)
    with mlflow.start_run(experiment_id=tracking.get_or_create_experiment("serve-test-models", served["client"])):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts={"model": served["model_dir"]})
    generator = _generator_of(mlflow.pyfunc.load_model(info.model_uri))
    texts = [PROMPTS[0], PROMPTS[2]]
    answers = [(c.text, c.tokens_out) for c in generator.answer(texts, max_new_tokens=MAX_NEW)]
    assert answers == generation.generate(served["model_dir"], texts, max_new_tokens=MAX_NEW, batch_size=2, seed=0)
