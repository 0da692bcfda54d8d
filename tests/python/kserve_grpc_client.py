"""kserve's InferenceGRPCClient against a host, for test_grpc.py.

kserve and tritonclient.grpc each register the `inference.*` protobuf messages in protobuf's
default pool, and one process cannot hold both, so test_grpc.py runs kserve's client here, in a
process of its own, and checks what it prints (one JSON object):

    python kserve_grpc_client.py ADDR health
    python kserve_grpc_client.py ADDR rows REFERENCE.json   # all rows, typed then raw contents
    python kserve_grpc_client.py ADDR classify REFERENCE.json K
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput


async def health(client):
    return {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready("digits"),
    }


def outputs(response):
    return {o.name: o.as_numpy() for o in response.outputs}


async def rows(client, x):
    result = {}
    for form in ("typed", "raw"):
        labels, probabilities = [], []
        for row in range(len(x)):
            if form == "typed":
                # A list goes into contents.fp32_contents.
                inp = InferInput("x", [1, 64], "FP32", data=x[row].tolist())
            else:
                # numpy with binary_data goes into raw_input_contents.
                inp = InferInput("x", [1, 64], "FP32")
                inp.set_data_from_numpy(x[row:row + 1], binary_data=True)
            response = await client.infer(
                InferRequest(model_name="digits", request_id=str(row), infer_inputs=[inp]))
            assert response.id == str(row), response.id
            out = outputs(response)
            labels.extend(out["label"].tolist())
            probabilities.extend(out["probabilities"].tolist())
        result[form] = {"labels": labels, "probabilities": probabilities}
    return result


async def classify(client, x, k):
    inp = InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    request = InferRequest(
        model_name="digits", infer_inputs=[inp],
        request_outputs=[RequestedOutput("probabilities", parameters={"classification": k})])
    (output,) = (await client.infer(request)).outputs
    return {
        "datatype": output.datatype,
        "shape": list(output.shape),
        "entries": [e.decode() if isinstance(e, bytes) else e
                    for e in output.as_numpy().flatten().tolist()],
    }


async def main(addr, command, *args):
    async with InferenceGRPCClient(addr, retries=0, timeout=60) as client:
        if command == "health":
            return await health(client)
        x = np.asarray(json.load(open(args[0]))["inputs"], dtype=np.float32)
        if command == "rows":
            return await rows(client, x)
        return await classify(client, x, int(args[1]))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
