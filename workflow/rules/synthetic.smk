# Synthetic training sets from the embeddings, and healthy -> diseased interpolation figures.


rule generate:
    input:
        embeddings=lambda wc: expand(f"{OUT['embeddings']}/{wc.modality}/{{cls}}.safetensors", cls=classes(wc.modality)),
    output:
        directory(f"{OUT['synthetic']}/{{modality}}"),
    params:
        settings=settings("generate", "base_model", "seed"),
        embeddings=parent_of("embeddings"),
    log:
        "logs/generate/{modality}.log",
    benchmark:
        "benchmarks/generate/{modality}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 2
    resources:
        gpu=GPU,
    shell:
        "medti generate --params params.yaml --modality {wildcards.modality} --embeddings {params.embeddings}"
        " --out {output} --log {log}"


rule interpolate:
    input:
        embeddings=lambda wc: expand(f"{OUT['embeddings']}/{wc.modality}/{{cls}}.safetensors", cls=classes(wc.modality)),
    output:
        directory(f"{OUT['interpolate']}/{{modality}}"),
    params:
        settings=settings("interpolate", "base_model", "seed", "generate"),
        embeddings=parent_of("embeddings"),
    log:
        "logs/interpolate/{modality}.log",
    benchmark:
        "benchmarks/interpolate/{modality}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 2
    resources:
        gpu=GPU,
    shell:
        "medti interpolate --params params.yaml --modality {wildcards.modality} --embeddings {params.embeddings}"
        " --out {output} --log {log}"
