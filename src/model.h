/* model.h: model folders, a layer above the single checkpoint: which files a folder's model is made
 * of, the names across them, and the documents beside them (index, configs). */
#ifndef WIDEN_MODEL_H
#define WIDEN_MODEL_H

#include <sys/types.h>

#include "internal.h"
#include "json.h"

/* A JSON document of the folder, its bytes and its parse. */
typedef struct widen_model_doc {
    char *rel;  /* path relative to the model's folder; NULL: absent */
    char *text;
    size_t size;
    widen_json json;
    char *error; /* a config that is there but cannot be read: why (an error only where it is needed) */
} widen_model_doc;

/* A folder, by device and inode. */
typedef struct widen_dir_id {
    dev_t dev;
    ino_t ino;
} widen_dir_id;

/* A folder whose weights form one model: the top folder, or a diffusers component (unet/, vae/). */
typedef struct widen_model_component {
    char *rel;                 /* "" for the top folder, else "unet" */
    char *prefix;              /* prepended to its tensor names: "" or "unet/" */
    widen_model_doc index;     /* its *.index.json, if the weights are sharded */
    widen_model_doc config;    /* config.json */
    widen_model_doc preprocessor; /* preprocessor_config.json */
    size_t first_file, file_count;
} widen_model_component;

typedef struct widen_model_part {
    char *rel;
    size_t component;
    widen_checkpoint *ckpt;
    size_t first_tensor;       /* its tensors are model tensors [first_tensor, first_tensor + count) */
} widen_model_part;

/* A file of the folder that is not the model's weights. */
typedef enum widen_other_kind {
    WIDEN_OTHER_COPY,    /* copied unchanged */
    WIDEN_OTHER_LEFT_OUT /* weights the model is not made of (another format, another index): left out */
} widen_other_kind;

typedef struct widen_model_other {
    char *rel;
    widen_other_kind kind;
    uint64_t size;
} widen_model_other;

struct widen_model {
    char *path;   /* as given */
    char *root;   /* the folder; NULL for a single file */
    widen_model_component *components;
    size_t component_count;
    widen_model_part *files;
    size_t file_count;
    widen_model_other *others; /* sorted by path; includes the documents above */
    size_t other_count;
    char **names;              /* model tensor names */
    size_t *tensor_file;       /* model tensor -> file */
    size_t tensor_count;
    widen_table by_name;
    widen_dir_id *dirs;        /* every folder the model's listing entered (links followed) */
    size_t dir_count;
    size_t json_nodes;         /* values of every document read, together */
    int skipped_history;       /* .git or .cache/huggingface was not read (nor is it copied) */
    char **notes;              /* what configs say about channels */
    size_t note_count;
    uint64_t size;
    /* while widen_model_open_with runs: its files' opens' progress (NULL: none), and for a folder the
     * run over them all, each file's share its size */
    const widen_open_work *opening;
    widen_meter *open_meter;
};

/* Component of a model tensor, and the tensor's index within its file. */
size_t widen_model_local_index(const widen_model *m, size_t tensor);

/* The configs' channel declarations of component k: the timm first layers (names without the
 * prefix, ".weight" added) and the counts config.json declares. */
typedef struct widen_channel_decl {
    char path[96];     /* "num_channels", "vision_config.num_channels", "in_channels", "pretrained_cfg.input_size[0]" */
    size_t node;       /* in the config's parse */
    double value;
} widen_channel_decl;

size_t widen_model_declarations(const widen_model *m, size_t component, widen_channel_decl *out, size_t max);
/* 1 if the config of component k names its first layer (timm's first_conv); fills names (at most max,
 * without the prefix, ".weight" added, malloc'ed each) */
size_t widen_model_first_layers(const widen_model *m, size_t component, char **names, size_t max);

/* "root/rel", malloc'ed. */
char *widen_path_join(const char *root, const char *rel);

/* Reads a whole small file of the folder. */
widen_status widen_model_read_doc(const char *root, const char *rel, widen_model_doc *doc, widen_error *err);
void widen_model_doc_free(widen_model_doc *doc);

/* Weight file names, for conversions: the name a weight file or index gets in format `format`
 * ("model-00001-of-00002.safetensors" <-> "pytorch_model-00001-of-00002.bin"). malloc'ed. */
char *widen_model_converted_name(const char *rel, const char *format);

#endif
