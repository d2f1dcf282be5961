import json
import sys

import mmsearch
from mmsearch.query.chat import ChatConfig, ask

col = mmsearch.open(sys.argv[1] if len(sys.argv) > 1 else ".demo.mms")

bundle = col.evidence("Is there a lighthouse in my pictures?", k=3)
print("found:", bundle.found)  # False: say "nothing relevant" instead of passing noise along
print(bundle.to_prompt())  # a citable evidence block ([I1], [T1], ...) to put before the question
payload = json.dumps(bundle.to_dict())  # the same bundle as JSON, for your own prompt template

if len(sys.argv) > 2:  # an OpenAI-compatible endpoint, e.g. a local llama.cpp or vLLM server
    print(ask(bundle, ChatConfig(url=sys.argv[2], model=sys.argv[3])))
