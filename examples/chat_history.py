"""Keep a conversation: pass the whole message list each turn."""

import edgegen


def main() -> None:
    gen = edgegen.load()
    messages = [{"role": "system", "content": "You are a concise assistant."}]
    for question in ["Name a fast land animal.", "How fast can it run?"]:
        messages.append({"role": "user", "content": question})
        answer = gen.generate(messages, max_new_tokens=64).text
        messages.append({"role": "assistant", "content": answer})
        print(f"> {question}\n{answer}\n")


if __name__ == "__main__":
    main()
