# Data: embedded dataset generation and preprocessing into the processed-scene contract.


if PARAMS.data.dataset == "synthetic":

    rule generate_synthetic:
        output:
            directory(RAW_ROOT),
        params:
            config=RESOLVED_CONFIG,
            synthetic=section("data", "synthetic"),
        log:
            "logs/generate_synthetic.log",
        benchmark:
            "benchmarks/generate_synthetic.tsv"
        threads: workflow.cores
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d generate --config {params.config} > {log} 2>&1"


# Real datasets: their ingestion options rerun preprocessing (the benchmark's la/lr files only
# select training labels, so they do not). The synthetic default carries none, so its jobs keep
# their recorded params.
_DATA = config["data"]
if _DATA["dataset"] in ("scannet", "scannet_npy"):
    INGEST_PARAMS = {"scannet": {k: v for k, v in _DATA["scannet"].items() if k not in ("la_file", "lr_file")}}
elif _DATA["dataset"] == "s3dis":
    INGEST_PARAMS = {"s3dis": _DATA["s3dis"]}
else:
    INGEST_PARAMS = {}
_TSV = _DATA["scannet"]["labels_tsv"]
INGEST_INPUTS = [_TSV] if "scannet" in INGEST_PARAMS and _TSV else []


rule preprocess:
    input:
        RAW_ROOT,
        *INGEST_INPUTS,
    output:
        directory(PROCESSED_ROOT),
    params:
        config=RESOLVED_CONFIG,
        dataset=section("data", "dataset"),
        num_classes=section("data", "num_classes"),
        **INGEST_PARAMS,
    log:
        "logs/preprocess.log",
    benchmark:
        "benchmarks/preprocess.tsv"
    threads: workflow.cores
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess --config {params.config} > {log} 2>&1"


rule preprocess_sevenscenes:
    # Optional target (real RGB-D, no labels): snakemake --cores all data/processed/sevenscenes
    input:
        PARAMS.data.sevenscenes.root,
    output:
        directory("data/processed/sevenscenes"),
    params:
        config=RESOLVED_CONFIG,
        sevenscenes=section("data", "sevenscenes"),
    log:
        "logs/preprocess_sevenscenes.log",
    benchmark:
        "benchmarks/preprocess_sevenscenes.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess sevenscenes --config {params.config} --raw-root {input}"
        " --out-root {output}/redkitchen > {log} 2>&1"
