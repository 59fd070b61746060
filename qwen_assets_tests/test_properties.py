"""The per-post properties, from the libraries' own shipped data: signs and orders that any
sane sentiment, hostility and length measure must respect."""

import numpy as np

from qwen_assets.pipeline.properties import document_properties
from qwen_assets.settings import SCORE_PROPERTIES

KIND = "Thank you so much, this is wonderful news and I really appreciate your help!"
HOSTILE = "Shut up, you stupid idiot. Nobody cares about your garbage opinions, moron."
PLAIN = "The shuttle launch is scheduled for Tuesday at 9 am from pad 39B."


def test_each_property_orders_obvious_texts_as_a_person_would():
    frame = document_properties([KIND, HOSTILE, PLAIN])
    assert list(frame.columns) == list(SCORE_PROPERTIES)
    kind, hostile, plain = frame.to_dict("records")
    assert kind["sentiment"] > 0.5 > plain["sentiment"] >= -0.1 > hostile["sentiment"]
    assert hostile["hostility"] > 0.5 > max(kind["hostility"], plain["hostility"])
    assert frame["length"].tolist() == [len(KIND), len(HOSTILE), len(PLAIN)]


def test_scores_stay_in_their_ranges_and_need_no_download():
    """Scored in a fresh process with every socket refused: the libraries' data is shipped."""
    import subprocess
    import sys

    guard = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('the network was used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from qwen_assets.pipeline.properties import document_properties\n"
        "print(document_properties(['ok', 'you idiot']).to_json())\n"
    )
    scored = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "hostility" in scored.stdout
    texts = [KIND * 30, "", PLAIN, "ok"]
    frame = document_properties(texts)
    assert np.isfinite(frame.to_numpy()).all()
    assert frame["sentiment"].between(-1, 1).all() and frame["hostility"].between(0, 1).all()
