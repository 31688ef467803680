# Diagnostic classifiers per condition (real, real+synthetic, synthetic per embedding variant), every seed of a
# condition in one job (`--seeds all`: the start-up is paid once), then their evaluation (which also judges the
# healthy -> diseased sweeps with the real-only classifiers).


rule train_classifier:
    input:
        prepared=f"{OUT['prepared']}/{{modality}}",
        synthetic=condition_synthetic,
    output:
        directory(f"{OUT['classifiers']}/{{modality}}/{{condition}}"),
    log:
        "logs/train_classifier/{modality}/{condition}.log",
    benchmark:
        "benchmarks/train_classifier/{modality}/{condition}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 1
    resources:
        gpu=gpu("classifier"),
    params:
        settings=settings("classifier", "seed"),
        synthetic=lambda wc: f"{OUT['synthetic']}/{wc.modality}",
    shell:
        "medti train-classifier --params params.yaml --modality {wildcards.modality}"
        " --condition {wildcards.condition} --seeds all"
        " --real {input.prepared}/manifest.csv --synthetic {params.synthetic} --out {output}"
        " --log {log} 2> {log}"


rule evaluate:
    input:
        classifiers=expand(f"{OUT['classifiers']}/{{{{modality}}}}/{{condition}}", condition=CONDITIONS),
        prepared=f"{OUT['prepared']}/{{modality}}",
        synthetic=expand(f"{OUT['synthetic']}/{{{{modality}}}}/{{variant}}", variant=VARIANTS),
        embeddings=embedding_folders,
        interpolate=f"{OUT['interpolate']}/{{modality}}",
    output:
        details=directory(f"{OUT['evaluate']}/{{modality}}"),
        metrics=f"{OUT['evaluate']}/{{modality}}.metrics.json",
        roc=f"{OUT['evaluate']}/{{modality}}.roc.csv",
    log:
        "logs/evaluate/{modality}.log",
    benchmark:
        "benchmarks/evaluate/{modality}.tsv"
    priority: PRIORITY["evaluate"]
    conda:
        "../envs/medti.yaml"
    threads: 1
    params:
        settings=settings("evaluate", "classifier"),
        classifiers=parent_of("classifiers"),
        synthetic=parent_of("synthetic"),
        embeddings=parent_of("embeddings"),
    shell:
        "medti evaluate --params params.yaml --modality {wildcards.modality} --classifiers {params.classifiers}"
        " --real {input.prepared}/manifest.csv --synthetic {params.synthetic}"
        " --embeddings {params.embeddings} --interpolate {input.interpolate} --out {output.details}"
        " --metrics {output.metrics} --roc {output.roc}"
        " --log {log} 2> {log}"
