"""Verifies webhook requests with the Standard Webhooks reference library for Python
(PyPI `standardwebhooks`), an implementation Clarion did not write.

Input (argv[1]): a JSON file, a list of cases
  {"secret": "whsec_...", "headers": {...}, "body": "<exact body>", "expect": true|false}
Prints one line per case and exits 1 if any case's verdict differs from `expect`.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    wrong = 0
    for i, case in enumerate(cases):
        try:
            Webhook(case["secret"]).verify(case["body"].encode("utf-8"), case["headers"])
            verified = True
            why = "verified"
        except Exception as e:  # the library raises WebhookVerificationError
            verified = False
            why = f"rejected: {e}"
        ok = verified == case["expect"]
        wrong += 0 if ok else 1
        print(f"case {i}: {'ok' if ok else 'WRONG'} ({why})")
    print(f"{len(cases) - wrong} of {len(cases)} as expected")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
