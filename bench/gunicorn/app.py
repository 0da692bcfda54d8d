"""The baseline wasm-host is measured against: the digits model in numpy,
served the way the original tutorial serves a model, a FastAPI app run by
gunicorn with uvicorn workers:

    gunicorn -w 4 -k uvicorn.workers.UvicornWorker --bind 127.0.0.1:PORT app:app

POST /predict takes {"inputs": [[64 floats], ...]} (pixels already scaled to
0..1) and answers the probabilities, the predicted labels and the PID of the
worker that served it. The weights are read from guest-model/weights/
digits_mlp.bin (layout: /work/shared/models/README.md, or guest-model/weights/
README.md), the same file the WebAssembly model embeds; the forward pass is
relu, relu, softmax in float32.
"""

import os
import struct
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

WEIGHTS = Path(
    os.environ.get(
        "DIGITS_WEIGHTS",
        Path(__file__).resolve().parents[2] / "guest-model" / "weights" / "digits_mlp.bin",
    )
)

RELU, SOFTMAX = 1, 2


def load_mlp(path):
    """Parses a DMLP file: a 24-byte header, (in, out, activation) per layer,
    the class labels, then per layer the weights [in][out] and the bias."""
    data = path.read_bytes()
    magic, version, layers, inputs, _scale, classes = struct.unpack_from("<4sIIIfI", data, 0)
    if magic != b"DMLP" or version != 1:
        raise ValueError(f"{path} is not a DMLP v1 file")
    offset = 24
    shapes = [struct.unpack_from("<III", data, offset + 12 * i) for i in range(layers)]
    offset += 12 * layers
    labels = np.frombuffer(data, "<i4", classes, offset).astype(np.int64)
    offset += 4 * classes
    model = []
    for n_in, n_out, activation in shapes:
        w = np.frombuffer(data, "<f4", n_in * n_out, offset).reshape(n_in, n_out)
        offset += 4 * n_in * n_out
        b = np.frombuffer(data, "<f4", n_out, offset)
        offset += 4 * n_out
        model.append((w, b, activation))
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} unexpected trailing bytes")
    return inputs, labels, model


INPUTS, LABELS, LAYERS = load_mlp(WEIGHTS)


def forward(x):
    h = x
    for w, b, activation in LAYERS:
        h = h @ w + b
        if activation == RELU:
            h = np.maximum(h, 0.0)
        elif activation == SOFTMAX:
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"activation {activation} is not used by the digits model")
    return h


class PredictRequest(BaseModel):
    inputs: list[list[float]]


app = FastAPI()


# async: the work is a few microseconds of numpy, so it runs on the event
# loop rather than hopping to a thread pool (the faster choice for the baseline).
@app.post("/predict")
async def predict(request: PredictRequest):
    x = np.asarray(request.inputs, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != INPUTS:
        return {"error": f"expected [rows, {INPUTS}] inputs, got shape {list(x.shape)}"}
    probabilities = forward(x)
    return {
        "probabilities": probabilities.tolist(),
        "prediction": LABELS[probabilities.argmax(axis=1)].tolist(),
        "pid": os.getpid(),
    }
