. /work/venv/bin/activate
T=button-press-topdown-v3; C=pt/model.safetensors; N=50000
python exp_ft.py none-skip0 $T $C 0 $N skip0 '{"reg":"none"}'
python exp_ft.py none-shuf $T $C 0 $N shuf '{"reg":"none"}'
python exp_ft.py bc-skip0 $T $C 0 $N skip0 '{}'
python exp_ft.py mean-none-skip0 $T $C 0 $N mean-skip0 '{"reg":"none"}'
