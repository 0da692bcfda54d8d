#!/usr/bin/env python3
"""Trains and exports scikit-learn, XGBoost and LightGBM models to ONNX, with test inputs and
onnxruntime's answers to them, deterministically.

    python3 examples/onnx/make_sklearn.py OUT_DIR [NAME ...]

For each model NAME this writes:

  OUT_DIR/NAME/model.onnx   the export (skl2onnx or onnxmltools, zipmap off): a model repository
                            folder, so `wasm-host --model-repository OUT_DIR` serves them all
  OUT_DIR/NAME.npz          `input:X` (the test rows) and `output:<name>` for every graph output,
                            as onnxruntime computes them on those rows

Needs tests/python/requirements.txt (scikit-learn, skl2onnx, onnxmltools, xgboost, lightgbm,
onnxruntime). Data comes from sklearn.datasets with fixed seeds; the test rows are held out from
training. Models (default: all): see MODELS below.
"""

import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

# The ai.onnx.ml opset the exports target: 3, the newest onnxruntime and the converters agree
# on, where tree ensembles may carry `*_as_tensor` attributes (double models use them).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# onnxmltools 1.16 converts up to opset 15.
ONNXMLTOOLS_OPSET = 15
ROWS = 30


def classification(classes, features=6, seed=0, n=300):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n + ROWS, n_features=features, n_informative=4, n_redundant=1,
        n_classes=classes, n_clusters_per_class=1, random_state=seed,
    )
    return x[:n].astype(np.float32), y[:n], x[n:].astype(np.float32)


def regression(features=5, seed=0, n=300):
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n + ROWS, n_features=features, noise=5.0, random_state=seed)
    return x[:n].astype(np.float32), y[:n], x[n:].astype(np.float32)


def skl(model, x, test, dtype=np.float32):
    """skl2onnx's export of a fitted model, zipmap off for classifiers."""
    from skl2onnx import to_onnx

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    try:
        onx = to_onnx(model, x[:1].astype(dtype), options={id(final): {"zipmap": False}},
                      target_opset=TARGET_OPSET)
    except NameError:
        # No ZipMap to turn off (LinearSVC): options of its own, or skl2onnx 1.20's pipeline
        # parser asks for `zipmap` anyway and fails.
        onx = to_onnx(model, x[:1].astype(dtype), options={id(final): {}},
                      target_opset=TARGET_OPSET)
    return onx, test.astype(dtype)


def scaler_logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, test = classification(3)
    return skl(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y), x, test)


def logreg_binary():
    from sklearn.linear_model import LogisticRegression

    x, y, test = classification(2, seed=1)
    return skl(LogisticRegression(max_iter=500).fit(x, y), x, test)


def imputer_minmax_linreg():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    x, y, test = regression()
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.1] = np.nan
    # Missing values in the rows served too: every column has some.
    test = test.copy()
    test[rng.random(test.shape) < 0.2] = np.nan
    model = make_pipeline(SimpleImputer(), MinMaxScaler(), LinearRegression()).fit(x, y)
    return skl(model, x, test)


def normalizer_linearsvc():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import LinearSVC

    x, y, test = classification(3, seed=2)
    return skl(make_pipeline(Normalizer(), LinearSVC()).fit(x, y), x, test)


def normalizer_svc():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import SVC

    x, y, test = classification(3, seed=3)
    model = make_pipeline(Normalizer(norm="l1"), SVC(probability=True, random_state=0)).fit(x, y)
    return skl(model, x, test)


def svc_binary():
    from sklearn.svm import SVC

    x, y, test = classification(2, seed=4)
    return skl(SVC(kernel="poly", degree=2, random_state=0).fit(x, y), x, test)


def binarizer_logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Binarizer

    x, y, test = classification(3, features=8, seed=5)
    model = make_pipeline(Binarizer(threshold=0.1), LogisticRegression(max_iter=500)).fit(x, y)
    return skl(model, x, test)


def decision_tree_regressor():
    from sklearn.tree import DecisionTreeRegressor

    x, y, test = regression(seed=6)
    return skl(DecisionTreeRegressor(max_depth=6, random_state=0).fit(x, y), x, test)


def random_forest_classifier():
    from sklearn.ensemble import RandomForestClassifier

    x, y, test = classification(3, seed=7)
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    return skl(model, x, test)


def random_forest_binary():
    from sklearn.ensemble import RandomForestClassifier

    x, y, test = classification(2, seed=8)
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    return skl(model, x, test)


def random_forest_regressor():
    from sklearn.ensemble import RandomForestRegressor

    x, y, test = regression(seed=9)
    model = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    return skl(model, x, test)


def random_forest_as_tensor():
    """The random forest classifier with ai.onnx.ml opset 3's `*_as_tensor` attributes in place
    of the float lists (skl2onnx writes them for double models, which onnxruntime cannot run)."""
    from onnx import helper, numpy_helper

    onx, test = random_forest_classifier()
    for node in onx.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            for attr in list(node.attribute):
                if attr.name in ("nodes_values", "class_weights", "target_weights", "base_values"):
                    values = np.asarray(attr.floats, dtype=np.float32)
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute(
                        attr.name + "_as_tensor", numpy_helper.from_array(values)))
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = 3  # where the `_as_tensor` forms appear
    return onx, test


def random_forest_multi_target():
    """Two targets at once: leaves carry one weight per target."""
    from sklearn.ensemble import RandomForestRegressor

    x, y, test = regression(seed=24)
    y2 = np.stack([y, np.sin(y / 50.0) * 10.0], axis=1)
    model = RandomForestRegressor(n_estimators=6, max_depth=4, random_state=0).fit(x, y2)
    return skl(model, x, test)


def with_attributes(onx, op_type, **values):
    """The export with some of `op_type`'s attributes replaced: the aggregations and
    post-transforms onnxruntime implements that the converters do not emit here."""
    from onnx import helper

    for node in onx.graph.node:
        if node.op_type == op_type:
            for name, value in values.items():
                for attr in [a for a in node.attribute if a.name == name]:
                    node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute(name, value))
    return onx


def forest_max():
    onx, test = random_forest_regressor()
    return with_attributes(onx, "TreeEnsembleRegressor", aggregate_function="MAX"), test


def forest_min():
    onx, test = random_forest_regressor()
    return with_attributes(onx, "TreeEnsembleRegressor", aggregate_function="MIN"), test


def boosting_softmax_zero():
    onx, test = gradient_boosting_multiclass()
    return with_attributes(onx, "TreeEnsembleClassifier", post_transform="SOFTMAX_ZERO"), test


def tree_probit():
    """PROBIT of a one-target regressor, trained on values inside (0, 1) where probit is finite."""
    from sklearn.tree import DecisionTreeRegressor

    x, y, test = regression(seed=25)
    p = 0.05 + 0.9 / (1.0 + np.exp(-y / 50.0))
    onx, test = skl(DecisionTreeRegressor(max_depth=5, random_state=0).fit(x, p), x, test)
    return with_attributes(onx, "TreeEnsembleRegressor", post_transform="PROBIT"), test


def gradient_boosting_binary():
    from sklearn.ensemble import GradientBoostingClassifier

    x, y, test = classification(2, seed=11)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    return skl(model, x, test)


def gradient_boosting_multiclass():
    from sklearn.ensemble import GradientBoostingClassifier

    x, y, test = classification(3, seed=12)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    return skl(model, x, test)


def gradient_boosting_regressor():
    from sklearn.ensemble import GradientBoostingRegressor

    x, y, test = regression(seed=13)
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    return skl(model, x, test)


def svr():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    x, y, test = regression(seed=14)
    return skl(make_pipeline(StandardScaler(), SVR(C=50.0)).fit(x, y), x, test)


def onehot_logreg():
    """Integer categorical features, one-hot encoded (int64 input)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(15)
    x = rng.integers(0, 4, size=(300 + ROWS, 3)).astype(np.int64)
    y = (x[:, 0] + 2 * (x[:, 1] == 2) + rng.integers(0, 2, size=len(x))) % 3
    model = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=500))
    model.fit(x[:300], y[:300])
    return skl(model, x[:300], x[300:], dtype=np.int64)


def column_transformer_ridge():
    """Columns picked and scaled apart (ArrayFeatureExtractor, Scaler, Concat)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    x, y, test = regression(seed=22)
    columns = ColumnTransformer([("a", StandardScaler(), [0, 2]), ("b", MaxAbsScaler(), [1, 3, 4])])
    return skl(make_pipeline(columns, Ridge()).fit(x, y), x, test)


def feature_vectorizer():
    """FeatureVectorizer, which no converter here emits for numeric inputs, built by hand: two
    column groups, the second zero-padded to 4 columns, then a LinearRegressor."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(23)
    nodes = [
        helper.make_node("ArrayFeatureExtractor", ["X", "first"], ["a"], domain="ai.onnx.ml"),
        helper.make_node("ArrayFeatureExtractor", ["X", "second"], ["b"], domain="ai.onnx.ml"),
        helper.make_node("FeatureVectorizer", ["a", "b"], ["ab"], domain="ai.onnx.ml",
                         inputdimensions=[2, 4]),
        helper.make_node("LinearRegressor", ["ab"], ["variable"], domain="ai.onnx.ml",
                         coefficients=rng.normal(size=12).tolist(), intercepts=[0.5, -1.0],
                         targets=2),
    ]
    graph = helper.make_graph(
        nodes, "feature_vectorizer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.array([0, 2], dtype=np.int64), "first"),
         numpy_helper.from_array(np.array([1, 3, 4], dtype=np.int64), "second")],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                  helper.make_opsetid("ai.onnx.ml", 1)])
    onx.producer_name = "wasm-host examples/onnx/make_sklearn.py"
    return onx, rng.normal(size=(ROWS, 5)).astype(np.float32)


def onnxmltools_types(x):
    from onnxmltools.convert.common.data_types import FloatTensorType

    return [("input", FloatTensorType([None, x.shape[1]]))]


def xgboost_classifier():
    from onnxmltools import convert_xgboost
    from xgboost import XGBClassifier

    x, y, test = classification(3, seed=16)
    model = XGBClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y)
    types = onnxmltools_types(x)
    return convert_xgboost(model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET), test


def xgboost_binary():
    from onnxmltools import convert_xgboost
    from xgboost import XGBClassifier

    x, y, test = classification(2, seed=17)
    model = XGBClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y)
    types = onnxmltools_types(x)
    return convert_xgboost(model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET), test


def xgboost_regressor():
    from onnxmltools import convert_xgboost
    from xgboost import XGBRegressor

    x, y, test = regression(seed=18)
    model = XGBRegressor(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    types = onnxmltools_types(x)
    return convert_xgboost(model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET), test


def lightgbm_classifier():
    from lightgbm import LGBMClassifier
    from onnxmltools import convert_lightgbm

    x, y, test = classification(3, seed=19)
    model = LGBMClassifier(n_estimators=15, num_leaves=8, random_state=0, verbose=-1).fit(x, y)
    onx = convert_lightgbm(model, initial_types=onnxmltools_types(x), zipmap=False,
                           target_opset=ONNXMLTOOLS_OPSET)
    return onx, test


def lightgbm_binary():
    from lightgbm import LGBMClassifier
    from onnxmltools import convert_lightgbm

    x, y, test = classification(2, seed=20)
    model = LGBMClassifier(n_estimators=15, num_leaves=8, random_state=0, verbose=-1).fit(x, y)
    onx = convert_lightgbm(model, initial_types=onnxmltools_types(x), zipmap=False,
                           target_opset=ONNXMLTOOLS_OPSET)
    return onx, test


def lightgbm_regressor():
    from lightgbm import LGBMRegressor
    from onnxmltools import convert_lightgbm

    x, y, test = regression(seed=21)
    model = LGBMRegressor(n_estimators=20, num_leaves=8, random_state=0, verbose=-1).fit(x, y)
    types = onnxmltools_types(x)
    return convert_lightgbm(model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET), test


MODELS = {f.__name__: f for f in [
    scaler_logreg, logreg_binary, imputer_minmax_linreg, normalizer_linearsvc, normalizer_svc,
    svc_binary, binarizer_logreg, decision_tree_regressor, random_forest_classifier,
    random_forest_binary, random_forest_regressor, random_forest_as_tensor,
    random_forest_multi_target, forest_max, forest_min, boosting_softmax_zero, tree_probit,
    gradient_boosting_binary, gradient_boosting_multiclass, gradient_boosting_regressor, svr,
    onehot_logreg, column_transformer_ridge, feature_vectorizer, xgboost_classifier,
    xgboost_binary, xgboost_regressor, lightgbm_classifier, lightgbm_binary, lightgbm_regressor,
]}


def write(name, onx, test, out_dir):
    """Saves the model and onnxruntime's answers on the test rows."""
    import onnx
    import onnxruntime as ort

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    onx.producer_version = onx.producer_version or "1"
    path = os.path.join(folder, "model.onnx")
    onnx.save(onx, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {inp.name: test})
    arrays = {f"input:{inp.name}": test}
    arrays.update({f"output:{n}": v for n, v in zip(names, outputs)})
    np.savez(os.path.join(out_dir, f"{name}.npz"), **arrays)
    return path


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name in argv[2:] or MODELS:
        onx, test = MODELS[name]()
        path = write(name, onx, test, out_dir)
        print(f"{path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main(sys.argv)
