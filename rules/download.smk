# Raw data download: only when data.download is configured (URLs with sha256, or the user's own
# script); otherwise raw_root is generated (rules/data.smk) or provided by the user. How the bytes
# are fetched (cache_dir, retries, timeout) is no rerun trigger: they are checked by sha256.


if PARAMS.data.download.enabled:

    rule download:
        output:
            **step_outputs("download"),
        input:
            unpack(step_inputs("download")),
        params:
            fields=step_params("download"),
        log:
            "logs/download.log",
        benchmark:
            "benchmarks/download.tsv"
        # Cluster compute nodes often have no internet: fetch on the submitting host.
        localrule: True
        priority: 25
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d download --config $PRETRAIN3D_CONFIG > {log} 2>&1"
