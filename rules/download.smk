# Raw data download: only when data.download is configured (URLs with sha256, or the user's own
# script); otherwise raw_root is generated (rules/data.smk) or provided by the user.


if PARAMS.data.download.enabled:

    rule download:
        output:
            directory(RAW_ROOT),
        params:
            config=RESOLVED_CONFIG,
            download=section("data", "download"),
        log:
            "logs/download.log",
        benchmark:
            "benchmarks/download.tsv"
        # Cluster compute nodes often have no internet: fetch on the submitting host.
        localrule: True
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d download --config {params.config} > {log} 2>&1"
