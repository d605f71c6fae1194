"""The gpu target's Whisper loop (``mode: bls``: each encoder call and decoder step is a
BLS request to the ``whisper_encoder`` / ``whisper_decoder`` / ``whisper_decoder_with_past``
models) runs on this CPU
machine too: a second Triton on a copy of the repository whose loop config says
``bls`` gives the same tokens as the in-process loop the cpu target uses."""
from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from percolate_models import configs
from percolate_models.catalog import WHISPER, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST, WHISPER_ENCODER
from percolate_triton import TritonConfig, TritonServer
from reading_frontend import speech
from reading_frontend.triton_models import TritonModels
from tests.audio_fixtures import jfk_flac, jfk_times
from tests.whisper_support import skip_where_the_int8_step_mixes_rows


def test_bls_loop_matches_the_in_process_loop(paths, tmp_path, triton_models):
    skip_where_the_int8_step_mixes_rows(paths)
    repo = tmp_path / "repo"
    for spec in (WHISPER_ENCODER, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST):
        (repo / spec.name).mkdir(parents=True)
        (repo / spec.name / "config.pbtxt").write_text(configs.render(spec, "cpu"))
        (repo / spec.name / "1").symlink_to(paths.model_repository / spec.name / "1")
    loop = repo / WHISPER.name
    (loop / "1").mkdir(parents=True)
    config = configs.model_config(WHISPER, "cpu")
    config.parameters["mode"].string_value = "bls"
    (loop / "config.pbtxt").write_text(configs.HEADER + configs.text_format.MessageToString(config))
    (loop / "1" / "model.py").write_text(configs.LOOP_MODEL_FILE)

    batch = []
    for audio in (jfk_flac(), jfk_times(2)):
        decoded = speech.decode_audio(audio, 7200)
        features = speech.log_mel(decoded.samples)
        batch += [speech.window_features(features, w)
                  for w in speech.plan_windows(features, decoded.samples)]
    batch = np.stack(batch)
    outputs = ["tokens", "no_speech_prob", "avg_logprob"]
    expected = triton_models.infer("whisper", {"input_features": batch}, outputs)
    with TritonServer(TritonConfig(model_repository=repo, log_dir=tmp_path / "logs")) as triton:
        with TritonModels(triton.grpc_url) as models:
            got = models.infer("whisper", {"input_features": batch}, outputs)
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            (encoder,) = client.get_inference_statistics(WHISPER_ENCODER.name, as_json=True)["model_stats"]
        finally:
            client.close()
    # the loop's windows went to the encoder in one BLS request, not one blocking call each
    assert int(encoder["inference_stats"]["success"]["count"]) == 1
    assert int(encoder["inference_count"]) == len(batch) > 1
    np.testing.assert_array_equal(got["tokens"], expected["tokens"])
    np.testing.assert_allclose(got["no_speech_prob"], expected["no_speech_prob"], atol=1e-5)
    np.testing.assert_allclose(got["avg_logprob"], expected["avg_logprob"], atol=1e-4)
