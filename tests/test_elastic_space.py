import json

import pytest

from slimtune.errors import ArtifactError
from slimtune.nas.space import ELASTIC_VERSION, ElasticSpace


def test_elastic_config_is_versioned_and_old_files_still_load(tmp_path):
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    space = ElasticSpace.build(names, [8, 6, 4], "module")
    space.save(tmp_path)
    data = json.loads((tmp_path / "elastic_config.json").read_text())
    assert data["version"] == 1 and ELASTIC_VERSION == 2  # rank groups only: still version 1 (older slimtune reads it)
    old = {k: v for k, v in data.items() if k != "version"}  # written before the field existed
    (tmp_path / "elastic_config.json").write_text(json.dumps(old))
    assert ElasticSpace.load(tmp_path).to_dict() == data
    (tmp_path / "elastic_config.json").write_text(json.dumps({**data, "version": 3}))
    with pytest.raises(ArtifactError, match="version 3 is not one this slimtune reads"):
        ElasticSpace.load(tmp_path)
