"""Run with the python of tests/stock_env.py (no `retrievers` installed): load a NeoBERT-SPLADE release from the
Hub (HF_ENDPOINT) the way a user without this package would, and print what loaded and its vectors as JSON.

    python stock_load.py REPO_ID REVISION TEXTS_JSON
"""

import importlib.util
import json
import sys

import torch
from sentence_transformers import SparseEncoder
from transformers import AutoModelForMaskedLM, AutoTokenizer

repo_id, revision, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
encoder = SparseEncoder(repo_id, revision=revision, trust_remote_code=True, device="cpu")
vectors = encoder.encode(texts, convert_to_sparse_tensor=False, convert_to_tensor=True)
mlm = AutoModelForMaskedLM.from_pretrained(repo_id, revision=revision, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
inputs = tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = mlm(**inputs).logits * inputs["attention_mask"][..., None]  # padding positions are not compared
print(json.dumps({
    "retrievers_installed": importlib.util.find_spec("retrievers") is not None,
    "encoder_class": f"{type(encoder[0].auto_model).__module__}.{type(encoder[0].auto_model).__name__}",
    "mlm_class": f"{type(mlm).__module__}.{type(mlm).__name__}",
    "vectors": vectors.tolist(),
    "logits": logits.tolist(),
}))
