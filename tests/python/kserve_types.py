"""Validates KServe manifests against the kserve SDK's own types, for test_kserve.py.

The kserve package registers the `inference.*` protobuf messages when imported, as
tritonclient.grpc does, and one process cannot hold both (see kserve_grpc_client.py); so
test_kserve.py runs this in a process of its own and reads what it prints (one JSON object):

    python kserve_types.py FILE.yaml...   # {"errors": [...], "kinds": [...], "ports": {...}}

Every document is checked by walking it beside the SDK class for its kind
(V1alpha1ClusterServingRuntime, V1beta1InferenceService, V1alpha1TrainedModel): every key must
be one the class knows (its attribute_map), at every level, down through the kubernetes client's
classes the SDK uses for pods (V1Container, V1Probe, ...); every value must have the type the
class declares; and every field the class requires must be there. The SDK's classes say what is
required by refusing to be built without it, so each object is also built: kserve's with their
constructors (whose setters refuse a missing required field), kubernetes' with pydantic's
model_validate (strict: unknown fields and wrong types are errors there too).
"""

import json
import re
import sys

import kserve
import kubernetes.client
import yaml
from kserve.constants import constants

GROUP = "serving.kserve.io"
KINDS = {
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
    "ServingRuntime": "V1alpha1ServingRuntime",
    "InferenceService": "V1beta1InferenceService",
    "TrainedModel": "V1alpha1TrainedModel",
}
# Fields the API server fills in; a manifest must not set them.
SERVER_SET = {"status"}
SCALARS = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    # A Kubernetes quantity: "256Mi", or a bare number.
    "ResourceQuantity": (str, int, float),
    "datetime": (str,),
}


def model_class(name):
    for module in (kserve, kubernetes.client):
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    return None


def is_pydantic(cls):
    return hasattr(cls, "model_validate")


def check(value, type_name, path, errors):
    """Checks `value` against the SDK type `type_name`; appends one line per problem."""
    type_name = type_name.strip()
    if type_name.startswith("Optional[") and type_name.endswith("]"):
        type_name = type_name[len("Optional["):-1]
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: a list ({type_name}), not {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f"{path}[{i}]", errors)
        return
    m = re.fullmatch(r"dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\]", type_name)
    if m:
        inner = m.group(2) or m.group(4)
        if not isinstance(value, dict):
            errors.append(f"{path}: a map ({type_name}), not {type(value).__name__}")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append(f"{path}: key {key!r} is not a string")
            check(item, inner, f"{path}.{key}", errors)
        return
    if type_name == "object":
        return  # IntOrString, free-form status: any JSON value
    if type_name in SCALARS:
        expected = SCALARS[type_name]
        if isinstance(value, bool) and bool not in expected:
            errors.append(f"{path}: {type_name}, not a boolean ({value!r})")
        elif not isinstance(value, expected):
            errors.append(f"{path}: {type_name}, not {type(value).__name__} ({value!r})")
        return
    cls = model_class(type_name)
    if cls is None:
        errors.append(f"{path}: the SDK has no type {type_name}")
        return
    check_object(value, cls, path, errors)


def check_object(value, cls, path, errors):
    if not isinstance(value, dict):
        errors.append(f"{path}: an object ({cls.__name__}), not {type(value).__name__}")
        return
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, item in value.items():
        attr = by_key.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: {cls.__name__} has no field {key!r}")
            continue
        check(item, cls.openapi_types[attr], f"{path}.{key}", errors)
    if is_pydantic(cls):
        # kubernetes' classes: pydantic, strict, extra fields forbidden, by the JSON names.
        try:
            cls.model_validate(value)
        except Exception as err:  # pydantic.ValidationError
            for problem in err.errors():
                where = ".".join(str(p) for p in problem["loc"])
                errors.append(f"{path}.{where}: {problem['msg']}")
    else:
        # kserve's classes: the setters refuse a missing required field (and bad enum values).
        try:
            cls(**{by_key[k]: v for k, v in value.items() if k in by_key})
        except (ValueError, TypeError) as err:
            errors.append(f"{path}: {cls.__name__}: {err}")


def validate(doc, where):
    errors = []
    kind = doc.get("kind")
    name = KINDS.get(kind)
    if name is None:
        return [f"{where}: kind {kind!r} is not one of KServe's {sorted(KINDS)}"]
    cls = model_class(name)
    version = re.match(r"V1(alpha1|beta1)?", name).group(0).lower()
    if doc.get("apiVersion") != f"{GROUP}/{version}":
        errors.append(f"{where}: apiVersion {doc.get('apiVersion')!r}, not {GROUP}/{version}")
    for field in SERVER_SET & doc.keys():
        errors.append(f"{where}.{field}: set by the API server, not by a manifest")
    check_object(doc, cls, where, errors)
    return errors


def main(paths):
    errors, kinds = [], []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for i, doc in enumerate(docs):
            name = (doc.get("metadata") or {}).get("name", "?")
            where = f"{path}#{i} {doc.get('kind')}/{name}"
            kinds.append(doc.get("kind"))
            errors += validate(doc, where)
    ports = {"http": constants.DEFAULT_HTTP_PORT, "grpc": constants.DEFAULT_GRPC_PORT}
    print(json.dumps({"errors": errors, "kinds": kinds, "ports": ports}))


if __name__ == "__main__":
    main(sys.argv[1:])
