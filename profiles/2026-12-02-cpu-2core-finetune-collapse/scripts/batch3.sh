. /work/venv/bin/activate
T=button-press-topdown-v3; C=pt/model.safetensors; N=50000
python exp_ft.py none-diff $T $C 0 $N diff '{"reg":"none"}'
python exp_ft.py none-lr2e-6 $T $C 0 $N none '{"reg":"none","lr":2e-6}'
python exp_ft.py none-shuf-lr2e-6 $T $C 0 $N shuf '{"reg":"none","lr":2e-6}'
python exp_ft.py none-diff-lr2e-6 $T $C 0 $N diff '{"reg":"none","lr":2e-6}'
