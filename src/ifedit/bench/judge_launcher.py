"""Run a benchmark's official scorer script unchanged, with its judge calls sent to the endpoint the user chose.

The official scorers hard-code their endpoint (RISEBench: module globals for `requests.post`; ImgEdit: an `OpenAI`
client; ByteMorph: an Azure client). This launcher, run by the scorer's own Python (stdlib only), redirects those
calls to $IFEDIT_JUDGE_BASE_URL with $IFEDIT_JUDGE_API_KEY and the model $IFEDIT_JUDGE_MODEL, then runs the script as
`__main__`: `python judge_launcher.py SCRIPT [ARGS...]`.
"""

from __future__ import annotations

import os
import runpy
import sys


def _patch_requests(url: str, key: str, model: str) -> None:
    try:
        import requests
    except ImportError:
        return
    post = requests.post

    def judge_post(_url, *args, headers=None, data=None, json=None, **kwargs):
        import json as json_module

        headers = {**(headers or {}), "Authorization": f"Bearer {key}"}
        if data is not None:
            payload = json_module.loads(data)
            data = json_module.dumps({**payload, "model": model})
        return post(f"{url}/chat/completions", *args, headers=headers, data=data, json=json, **kwargs)

    requests.post = judge_post


def _patch_openai(url: str, key: str, model: str) -> None:
    try:
        import openai
    except ImportError:
        return

    class JudgeClient(openai.OpenAI):
        def __init__(self, *args, **kwargs):
            super().__init__(api_key=key, base_url=url)
            create = self.chat.completions.create
            self.chat.completions.create = lambda *a, **k: create(*a, **{**k, "model": model})

    openai.OpenAI = JudgeClient


def _patch_langchain(url: str, key: str, model: str) -> None:
    try:
        import langchain_openai
    except ImportError:
        return

    def azure_client(*args, **kwargs):
        return langchain_openai.ChatOpenAI(base_url=url, api_key=key, model=model)

    langchain_openai.AzureChatOpenAI = azure_client


def main() -> None:
    script, *arguments = sys.argv[1:]
    url = os.environ["IFEDIT_JUDGE_BASE_URL"].rstrip("/")
    key = os.environ.get("IFEDIT_JUDGE_API_KEY", "")
    model = os.environ["IFEDIT_JUDGE_MODEL"]
    for patch in (_patch_requests, _patch_openai, _patch_langchain):
        patch(url, key, model)
    sys.argv = [script, *arguments]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
