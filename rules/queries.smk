# Scene queries (issue 11): one feature source's keypoint index of the val repository (val + rescans)
# and its image / duplicate / text query benchmarks. Baselines run once, methods per seed.


rule scene_queries:
    input:
        unpack(step_inputs("scene_queries")),
        unpack(_real_check_inputs),  # the 7-Scenes fixture where it exists (its frames are real image queries)
    output:
        **step_outputs("scene_queries"),
    params:
        fields=step_params("scene_queries"),
        backbone=_query_backbone_arg,
    log:
        f"{LOGS}/queries/{{source}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/queries/{{source}}-seed{{seed}}.tsv"
    threads: PARAMS.train.threads
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d query-benchmark --config $PRETRAIN3D_CONFIG --source {wildcards.source} --seed {wildcards.seed}"
        " {params.backbone} --out-dir $(dirname {output.metrics}) --no-progress > {log} 2>&1"
