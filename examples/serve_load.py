"""A bounded load test of a running `edgegen serve`: C clients x R greedy requests at once, then the figures.

    edgegen serve --max-queue 16 &
    python examples/serve_load.py --clients 16 --requests 10 --max-tokens 16

Each distinct prompt is first answered alone; every answer under load must equal it (none lost or
mixed up). A 503 (queue full) is counted, not retried. Prints p50/p95 latency and tokens/s. Localhost only.
"""

import argparse
import statistics
import threading
import time

import httpx

PROMPTS = [f"Write one short sentence about the number {i}." for i in range(8)]


def ask(http: httpx.Client, prompt: str, max_tokens: int) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                   "max_tokens": max_tokens, "temperature": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="Requests per client.")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    with httpx.Client(base_url=args.url, timeout=600) as http:
        alone = {p: ask(http, p, args.max_tokens).json()["choices"][0]["message"]["content"] for p in PROMPTS}
    results: list[tuple[str, int, float, str | None, int]] = []  # prompt, status, seconds, text, tokens
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=args.url, timeout=600) as http:
            for j in range(args.requests):
                prompt = PROMPTS[(i + j) % len(PROMPTS)]
                start = time.perf_counter()
                response = ask(http, prompt, args.max_tokens)
                took = time.perf_counter() - start
                body = response.json()
                text = body["choices"][0]["message"]["content"] if response.status_code == 200 else None
                tokens = body["usage"]["completion_tokens"] if response.status_code == 200 else 0
                with lock:
                    results.append((prompt, response.status_code, took, text, tokens))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start

    ok = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] == 503]
    wrong = [r for r in ok if r[3] != alone[r[0]]]
    other = len(results) - len(ok) - len(refused)
    latencies = sorted(r[2] for r in ok)
    tokens = sum(r[4] for r in ok)
    print(f"{len(results)} requests ({args.clients} clients x {args.requests}), {len(ok)} answered, "
          f"{len(refused)} refused (503), {other} other errors, {len(wrong)} answers differing from the request alone")
    if latencies:
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(f"latency p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s; {tokens} tokens in {wall:.1f} s "
              f"= {tokens / wall:.1f} tokens/s, {len(ok) / wall:.2f} requests/s")


if __name__ == "__main__":
    main()
