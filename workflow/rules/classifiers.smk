# Diagnostic classifiers per condition (real, real+synthetic, synthetic) and seed, then their evaluation.


rule train_classifier:
    input:
        prepared=f"{OUT['prepared']}/{{modality}}",
        synthetic=f"{OUT['synthetic']}/{{modality}}",
    output:
        directory(f"{OUT['classifiers']}/{{modality}}/{{condition}}/seed{{seed}}"),
    params:
        settings=settings("classifier", "seed"),
    log:
        "logs/train_classifier/{modality}/{condition}/seed{seed}.log",
    benchmark:
        "benchmarks/train_classifier/{modality}/{condition}/seed{seed}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 1
    shell:
        "medti train-classifier --params params.yaml --modality {wildcards.modality}"
        " --condition {wildcards.condition} --seed {wildcards.seed}"
        " --real {input.prepared}/manifest.csv --synthetic {input.synthetic}/manifest.csv --out {output}"
        " --log {log}"


rule evaluate:
    input:
        classifiers=expand(
            f"{OUT['classifiers']}/{{{{modality}}}}/{{condition}}/seed{{seed}}", condition=CONDITIONS, seed=SEEDS
        ),
        prepared=f"{OUT['prepared']}/{{modality}}",
        synthetic=f"{OUT['synthetic']}/{{modality}}",
        embeddings=lambda wc: expand(f"{OUT['embeddings']}/{wc.modality}/{{cls}}.safetensors", cls=classes(wc.modality)),
    output:
        details=directory(f"{OUT['evaluate']}/{{modality}}"),
        metrics=f"{OUT['evaluate']}/{{modality}}.metrics.json",
        roc=f"{OUT['evaluate']}/{{modality}}.roc.csv",
    params:
        settings=settings("evaluate", "classifier"),
        classifiers=parent_of("classifiers", levels=2),
        embeddings=parent_of("embeddings"),
    log:
        "logs/evaluate/{modality}.log",
    benchmark:
        "benchmarks/evaluate/{modality}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 1
    shell:
        "medti evaluate --params params.yaml --modality {wildcards.modality} --classifiers {params.classifiers}"
        " --real {input.prepared}/manifest.csv --synthetic {input.synthetic}/manifest.csv"
        " --embeddings {params.embeddings} --out {output.details} --metrics {output.metrics} --roc {output.roc}"
        " --log {log}"
