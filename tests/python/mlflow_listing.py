"""What the scripts here share: a run's artifact files as the real client lists them."""


def artifact_files(client, run_id):
    """Every artifact file of the run, as {path: size}, listed folder by folder with
    MlflowClient.list_artifacts, as a user walking the run's artifacts would."""
    files = {}

    def walk(path):
        for info in client.list_artifacts(run_id, path):
            if info.is_dir:
                walk(info.path)
            else:
                files[info.path] = info.file_size

    walk(None)
    return files
