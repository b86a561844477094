"""Talk to `covip serve` from another process with the standard `openai` client (any OpenAI-compatible
client in any language works the same way: base URL + the `user` field + an image_url part).

Without --url it first starts `covip serve` as a subprocess on a free port (tiny offline models, a temporary
home) and stops it at the end.

    python examples/openai_client.py                                   # starts its own server
    python examples/openai_client.py --url http://127.0.0.1:8765       # a running `covip serve`
    COVIP_API_TOKEN=... python examples/openai_client.py --url http://host:8765
"""

from __future__ import annotations

import argparse
import atexit
import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx  # installed with openai
from openai import OpenAI

from covip.sdk.demo import DEMO_CONCEPTS, draw_concept

COVIP = [sys.executable, "-c", "import sys; from covip.sdk.cli import main; sys.exit(main())"]  # = `covip`


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    """`covip init` a home for the tiny models, then `covip serve --port 0`; returns (process, base URL)."""
    subprocess.run([*COVIP, "--home", str(home), "init", "--model", "tiny", "--embedder", "tiny"], check=True,
                   capture_output=True)
    proc = subprocess.Popen([*COVIP, "--home", str(home), "serve", "--port", "0", "--max-tokens", "16"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # covip serve prints "... web page http://127.0.0.1:PORT/ ..." once it listens
        if "web page " in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
            return proc, line.split("web page ")[1].split()[0].rstrip("/")
    raise SystemExit(f"covip serve exited with {proc.wait()}")


def photo_bytes(concept: int, variant: int) -> bytes:
    buf = io.BytesIO()
    draw_concept(DEMO_CONCEPTS[concept], variant).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running covip serve (default: start one)")
    parser.add_argument("--home", type=Path, help="memory home of the server it starts (default: a temporary one)")
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        work = Path(tempfile.mkdtemp(prefix="covip-openai-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing is left behind
        proc, url = start_server(args.home or work / "home")
        print(f"started covip serve at {url}")
    token = os.environ.get("COVIP_API_TOKEN", "unused-on-loopback")
    try:
        # Memory endpoints are plain HTTP (multipart upload): remember a photo of Bori with a dialogue.
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{url}/v1/users/ana/memories", headers=auth,
                       files={"photo": ("bori.png", photo_bytes(0, 0), "image/png")},
                       data={"dialogue": "User: This is Bori at the Han river.", "concepts": ["Bori"]})
        r.raise_for_status()
        print(f"remembered photo {r.json()['photo']['id']} for ana")

        # The chat endpoint is OpenAI's: an unmodified client, `user` = whose memories to use.
        client = OpenAI(base_url=f"{url}/v1", api_key=token)
        image = "data:image/png;base64," + base64.b64encode(photo_bytes(0, 7)).decode()
        messages = [{"role": "user", "content": [{"type": "text", "text": "Who is this?"},
                                                 {"type": "image_url", "image_url": {"url": image}}]}]
        reply = client.chat.completions.create(model="covip", user="ana", messages=messages)
        print(f"answer: {reply.choices[0].message.content}")
        covip = reply.model_extra["covip"]  # covip's extension: the provenance of the answer
        print(f"caption: {covip['caption']}")
        print("memories used:", [(m["photo_id"], m["concepts"], m["dialogue"]) for m in covip["memories"]])

        print("streamed: ", end="", flush=True)
        for chunk in client.chat.completions.create(model="covip", user="ana", messages=messages, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
