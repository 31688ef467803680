# Synthetic training sets, one per modality and embedding variant, and healthy -> diseased interpolation
# figures (drawn with the main variant).
# generate stages its images in <generate.out>/<modality>/.medti-partial/<variant>/, outside the declared output, and
# moves the finished set into place: a killed job's rerun (--rerun-incomplete too) draws only the missing ones.


rule generate:
    input:
        embeddings=embedding_folders,
    output:
        directory(f"{OUT['synthetic']}/{{modality}}/{{variant}}"),
    log:
        "logs/generate/{modality}/{variant}.log",
    benchmark:
        "benchmarks/generate/{modality}/{variant}.tsv"
    priority: PRIORITY["generate"]
    conda:
        "../envs/medti.yaml"
    threads: 2
    resources:
        gpu=gpu("base_model"),
    params:
        settings=settings("generate", "base_model", "seed"),
        embeddings=parent_of("embeddings"),
    shell:
        "medti generate --params params.yaml --modality {wildcards.modality} --variant {wildcards.variant}"
        " --embeddings {params.embeddings} --out {output} --log {log} 2> {log}"


rule interpolate:
    input:
        embeddings=embedding_folders,
    output:
        directory(f"{OUT['interpolate']}/{{modality}}"),
    log:
        "logs/interpolate/{modality}.log",
    benchmark:
        "benchmarks/interpolate/{modality}.tsv"
    priority: PRIORITY["interpolate"]
    conda:
        "../envs/medti.yaml"
    threads: 2
    resources:
        gpu=gpu("base_model"),
    params:
        settings=settings("interpolate", "base_model", "seed", "generate"),
        embeddings=parent_of("embeddings"),
    shell:
        "medti interpolate --params params.yaml --modality {wildcards.modality} --embeddings {params.embeddings}"
        " --out {output} --log {log} 2> {log}"
