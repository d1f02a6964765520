"""Load: many clients at once all get correct videos; outputs of many requests stay bounded."""
import concurrent.futures

import pytest

import app
from pipeline import app_support as sup
from pipeline import media
from pipeline.config import FPS
from tests.test_app import free_port, other_portrait, speech, TMP


def test_request_folders_stay_bounded(tmp_path):
    made = [sup.request_dir(tmp_path, keep=8) for _ in range(50)]
    left = sorted(p for p in tmp_path.iterdir())
    assert len(left) == 8 and left == sorted(made[-8:])


@pytest.mark.slow
def test_eight_clients_three_requests_each(small_pipe):
    """8 clients x 3 requests at once against one app (small random model): 24 correct mp4s."""
    from gradio_client import Client, handle_file

    demo = app.build_demo(small_pipe, examples_dir=TMP / "none")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    image = other_portrait(TMP)

    def client_run(k):
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        return [client.predict(handle_file(image), app.SOURCE_AUDIO, handle_file(speech(1.0)), seed=k * 3 + r,
                               steps=1, api_name="/generate_video")[0] for r in range(3)]

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            paths = [p for ps in pool.map(client_run, range(8)) for p in ps]
    finally:
        demo.close()
    assert len(paths) == len(set(paths)) == 24
    assert all(media.probe(p) == {"video": "h264", "audio": "aac", "frames": FPS} for p in paths)
