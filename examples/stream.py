"""Stream tokens from the embedded default model into a desktop app (here: the terminal).

    python examples/stream.py "Explain what an NPU is in two sentences."
"""

import sys

import edgegen


def main() -> None:
    prompt = " ".join(sys.argv[1:]) or "Explain what an NPU is in two sentences."
    gen = edgegen.load()  # SmolLM2-135M-Instruct; the faster backend for this CPU
    stream = gen.stream(prompt, max_new_tokens=128, temperature=0.7, top_p=0.9, seed=0)
    for piece in stream:
        print(piece, end="", flush=True)
    stats = stream.result.stats
    print(f"\n[{stats.new_tokens} tokens at {stats.tokens_per_s:.1f} tokens/s on {stats.backend}]")


if __name__ == "__main__":
    main()
