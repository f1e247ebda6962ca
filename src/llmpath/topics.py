"""The one list of topics, in learning-path order: the CLI, the tour, the doctor and `load_run` read it.

Adding a topic is one `Topic(...)` line here. Its package holds `cli.py` with COMMANDS, PRESETS,
`tour(preset, out, fresh) -> StageResult` (when it has a tour stage) and `smoke() -> str` (the doctor's
forward pass); `config`, `model` and `tokenizer` ("module:attr") let `load_run` rebuild a trained run
from its checkpoint alone: `model(cfg.model)` with `cfg = config(**checkpoint["config"])`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    package: str  # llmpath.<topic>: COMMANDS and PRESETS live in <package>.cli
    title: str  # one line for `llmpath list` and `llmpath <topic> --help`
    stage: str = ""  # tour stage number ("" = not in the tour)
    stage_title: str = ""  # the tour report's heading (Chinese)
    tutorial: str = ""
    notebook: str = ""
    teaches: str = ""  # the paragraph the tour report shows
    config: str = ""  # "module:Class" of the run config its checkpoints hold
    model: str = ""  # "module:Class" built as Class(cfg.model)
    tokenizer: str = ""  # "module:function" that rebuilds the tokenizer from its state_dict()

    @property
    def cli(self) -> str:
        return self.package + ".cli"


TOPIC_LIST: list[Topic] = [
    Topic("mlp", "llmpath.mlp", "stage 1: MLP with hand-written backprop; text classification",
          stage="1", stage_title="MLP 与手写反向传播：文本分类",
          tutorial="docs/tutorials/01_mlp.md", notebook="notebooks/01_mlp.ipynb",
          teaches=("只用 NumPy 手写线性层、激活函数、softmax 交叉熵的前向与反向传播，以及 SGD / 动量 / Adam；"
                   "用有限差分和 PyTorch autograd 验证梯度；再在英文推文与中文评论的 TF-IDF 特征上，"
                   "与 scikit-learn 逻辑回归比较。")),
    Topic("rnn", "llmpath.rnn", "stage 2: RNN/LSTM/GRU from scratch; char-level Shakespeare LM",
          stage="2", stage_title="RNN / LSTM / GRU：字符级莎士比亚语言模型",
          tutorial="docs/tutorials/02_rnn_lstm.md", notebook="notebooks/02_rnn_lstm.ipynb",
          config="llmpath.rnn.cli:RNNRun", model="llmpath.rnn.lm:CharRNN",
          tokenizer="llmpath.rnn.cli:tokenizer_from_state",
          teaches=("用张量运算手写 RNN、LSTM、GRU（与 torch.nn 逐项一致），在莎士比亚全集上训练字符级语言模型，"
                   "在相同参数量和步数下与 Kneser-Ney 字符 n-gram 比较；画出梯度消失（100+ 步，"
                   "对数坐标）、梯度爆炸与裁剪、LSTM 门控热力图，并比较采样温度。")),
    Topic("seq2seq", "llmpath.seq2seq", "stage 3: attention seq2seq translation (Bahdanau, Luong), beam search, BLEU",
          stage="3", stage_title="注意力 seq2seq：中英翻译（Bahdanau 与 Luong）、束搜索、BLEU、对齐图",
          tutorial="docs/tutorials/03_attention_seq2seq.md", notebook="notebooks/03_attention_seq2seq.ipynb",
          config="llmpath.seq2seq.cli:Seq2SeqRun", model="llmpath.seq2seq.model:Seq2Seq",
          tokenizer="llmpath.seq2seq.translation:vocab_from_state",
          teaches=("双向 GRU 编码器（第 2 阶段手写的单元）+ 解码器：先用一个固定上下文向量（信息瓶颈），"
                   "再加 Bahdanau 加性注意力；"
                   "Luong 的 dot / general / concat 打分在 `llmpath seq2seq compare` 里比较。"
                   "贪心与束搜索解码，sacrebleu 的 BLEU / chrF，以及中文源句 × 英文译文的注意力对齐热力图。")),
    Topic("transformer", "llmpath.transformer", "stage 4: Transformer encoder-decoder from scratch, equal to torch.nn.Transformer; translation",
          stage="4", stage_title="Transformer 编码器-解码器：从零实现，与 torch.nn.Transformer 一致，中英翻译",
          tutorial="docs/tutorials/04_transformer.md", notebook="notebooks/04_transformer.ipynb",
          config="llmpath.transformer.cli:TransformerRun", model="llmpath.transformer.model:Transformer",
          tokenizer="llmpath.seq2seq.translation:vocab_from_state",
          teaches=("从第 3 章的注意力出发，"
                   "只用注意力搭出整个模型：缩放点积注意力（手写版与 F.scaled_dot_product_attention 一致）、多头自注意力与交叉注意力、逐位置前馈、残差 + LayerNorm（Post-LN 与 Pre-LN）、正弦与可学习位置编码、共享权重的输出层、标签平滑与 Noam 学习率；"
                   "整个编码器-解码器复制权重后与 torch.nn.Transformer 输出和梯度一致；"
                   "带 KV 缓存的贪心与束搜索解码（与不缓存逐 token 相同）；"
                   "在第 3 章同一份中英数据上与 RNN 注意力模型比较 BLEU，"
                   "并做消融（去掉位置编码、单头、Pre-LN、去掉标签平滑）。")),
    Topic("tokenizer", "llmpath.tokenizers", "stage 5a: byte-level BPE from scratch, fast to train, identical to tiktoken",
          stage="5a", stage_title="分词：从零实现字节级 BPE，训练快，编码与 tiktoken 一致",
          tutorial="docs/tutorials/05a_tokenization.md", notebook="notebooks/05a_tokenization.ipynb",
          teaches=("用正则预切分（GPT-2 / GPT-4 模式）加字节级 BPE 训练词表：朴素版每步重数所有字符对，"
                   "快速版只更新含被合并对的词并用带惰性失效的堆取最大对，两者学到完全相同的合并；"
                   "编码结果与 tiktoken 逐 token 相同，任意 Unicode（中文、emoji）都能无损往返；"
                   "在莎士比亚与中文评论上与 Hugging Face tokenizers 比较词表重合度和压缩率（每字符 token 数）。")),
    Topic("gpt", "llmpath.gpt", "stage 5: GPT pretraining, sampling, KV cache, Hugging Face interop, DDP, finetuning",
          stage="5", stage_title="GPT：预训练、采样、KV 缓存、与 Hugging Face 互通、微调",
          tutorial="docs/tutorials/05_gpt.md", notebook="notebooks/05_gpt.ipynb",
          config="llmpath.gpt.pretrain:GPTRun", model="llmpath.gpt.model:GPT",
          tokenizer="llmpath.gpt.data:tokenizer_from_state",
          teaches=("只有解码器的 GPT-2 结构（Pre-LN、因果自注意力、GELU、权重共享），在莎士比亚全集上做字符级预训练；"
                   "逐 token 采样（温度、top-k、top-p、重复惩罚）与束搜索；KV 缓存让每个新 token 只算一行注意力，"
                   "输出与不缓存完全相同；"
                   "权重与 Hugging Face GPT2LMHeadModel 互相导入导出、logits 一致；"
                   "最后把预训练模型微调到分类和新领域。")),
    Topic("bert", "llmpath.bert", "stage 6: BERT, MLM + NSP pretraining and finetuning, equal to Hugging Face's BertForPreTraining",
          stage="6", stage_title="BERT：双向编码器，MLM + NSP 预训练与分类微调",
          tutorial="docs/tutorials/06_bert.md", notebook="notebooks/06_bert.ipynb",
          config="llmpath.bert.pretrain:BERTRun", model="llmpath.bert.model:BERTPretraining",
          tokenizer="llmpath.tokenizers:from_state_dict",
          teaches=("只有编码器、双向注意力的 BERT（词元 + 句段 + 位置嵌入、Post-LN、GELU、池化层、与词嵌入共享权重的 MLM 头、NSP 头），"
                   "复制权重后与 Hugging Face BertForPreTraining 的输出、损失和梯度一致；自己训练 WordPiece 词表"
                   "（编码与 BertTokenizer 逐 id 相同）；在维基百科样本、莎士比亚和两份分类数据的训练文本上做掩码语言模型"
                   "与下一句预测预训练；再微调到英文推文与中文评论分类，与同一模型从零训练、TF-IDF 逻辑回归比较，"
                   "给出配对自助法区间。")),
    Topic("vit", "llmpath.vit", "stage 7: Vision Transformer vs a CNN on handwritten digits, equal to Hugging Face's ViT",
          stage="7", stage_title="ViT 与 CNN：图块嵌入、二维位置编码、手写数字分类",
          tutorial="docs/tutorials/07_vit.md", notebook="notebooks/07_vit.ipynb",
          config="llmpath.vit.experiments:ImageRun", model="llmpath.vit.experiments:build_model",
          tokenizer="llmpath.vit.experiments:normalizer_from_state",
          teaches=("把图像切成图块、每块线性投影成一个词元，加上 [CLS] 与位置编码（可学习一维、固定二维正弦-余弦），"
                   "交给第 4 章的 Pre-LN 编码器层：这就是 Vision Transformer，复制权重后与 Hugging Face "
                   "ViTForImageClassification 的输出和梯度一致；在 mnist-5k 与 scikit-learn digits 上，"
                   "与参数量相近的 LeNet 式 CNN 在相同轮数和相同时间下比较，并用学到的位置嵌入相似度、注意力展开、"
                   "卷积核和学习曲线解释差距从何而来（归纳偏置与数据量）。")),
    Topic("word2vec", "llmpath.word2vec", "stage 8: word vectors, CBOW and skip-gram with negative sampling, against gensim",
          stage="8", stage_title="词向量：CBOW 与 skip-gram、负采样，与 gensim 并排比较；静态与上下文向量",
          tutorial="docs/tutorials/08_word2vec.md", notebook="notebooks/08_word2vec.ipynb",
          config="llmpath.word2vec.training:Word2VecRun", model="llmpath.word2vec.model:Word2Vec",
          tokenizer="llmpath.word2vec.data:vocab_from_state",
          teaches=("从分布假设出发，手写 word2vec 的两种目标（CBOW：窗口平均预测中心词；skip-gram：中心词预测邻居）"
                   "与负采样（噪声词按词频的 3/4 次方抽，手推梯度与 autograd 逐行一致，一步更新只动批里出现的行），"
                   "常见词下采样、动态窗口、最小词频；目标函数交给共用的 fit。在 gensim 自带的维基百科样本上与 "
                   "gensim 的 C 实现同设置、3 个种子比较 WordSim-353、SimLex-999 与类比准确率；中文评论用 jieba 分词与按字"
                   "对照；最后用第 6 章的 BERT 对比同一个词的静态向量与上下文向量。")),
    Topic("llama", "llmpath.llama", "stage 9: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA) and mixture of experts",
          stage="9", stage_title="现代解码器：Llama 式结构（RMSNorm、RoPE、SwiGLU、GQA）与混合专家",
          tutorial="docs/tutorials/09_modern_llm.md", notebook="notebooks/09_modern_llm.ipynb",
          config="llmpath.llama.experiments:LlamaRun", model="llmpath.llama.model:Llama",
          tokenizer="llmpath.gpt.data:tokenizer_from_state",
          teaches=("从第 5 章 GPT-2 的块出发，一次只换一处：LayerNorm 换成 RMSNorm，学习的位置表换成旋转位置编码 RoPE，"
                   "GELU 前馈换成 SwiGLU，多头注意力换成分组查询注意力 GQA（KV 缓存随之变小）；"
                   "在同样的莎士比亚数据、参数量和步数下逐项比较验证损失。再把前馈换成稀疏的混合专家（MoE）："
                   "路由器为每个词元选 2 个专家，负载均衡损失让专家都有活干。模型与 Hugging Face 的 "
                   "LlamaForCausalLM、MixtralForCausalLM 复制权重后 logits、梯度与贪心生成一致；生成与 KV 缓存"
                   "由所有解码器共用的模块完成。")),
    Topic("efficient", "llmpath.efficient", "stage 10: LoRA, weight-only int8/int4 quantization, distillation, compile",
          stage="10", stage_title="让模型变便宜：LoRA、权重量化、知识蒸馏",
          tutorial="docs/tutorials/10_efficiency.md", notebook="notebooks/10_efficiency.ipynb",
          teaches=("把第 5 章预训练好的 GPT 变便宜：LoRA 冻结原权重，只训练注意力层旁边一对低秩矩阵，"
                   "与全量微调比较验证损失、可训练参数和要保存的文件；把权重量化成 int8（按通道）和 int4（按组），"
                   "看模型小了多少、验证损失涨了多少；再让一个四分之一大小的学生向教师蒸馏，与只学标签的学生比较。"
                   "LoRA 与 peft、量化与 torchao 逐项对照。")),
    Topic("chat", "llmpath.chat", "stage 11: your own chat model: a bilingual base model, chat template, SFT",
          stage="11", stage_title="自己的对话模型（一）：双语基座模型、对话模板与指令微调（SFT）",
          tutorial="docs/tutorials/11_sft.md", notebook="notebooks/11_sft.ipynb",
          config="llmpath.chat.finetune:SFTRun", model="llmpath.llama.model:Llama",
          tokenizer="llmpath.gpt.data:tokenizer_from_state",
          teaches=("用课程自己的中英文数据（评论、HSK 句子、维基百科样本、莎士比亚、推文、聊天语料）训练字节级 BPE "
                   "和一个 Llama 式基座模型；再把翻译、情感、成语接龙、算术、闲聊做成对话格式的指令数据"
                   "（按来源条目划分，测试题的来源从未在训练中出现），用 ChatML 对话模板和只在回答上算的损失做指令微调；"
                   "逐个任务比较：基座模型少样本提示、SFT、不掩码的 SFT，以及前几章的专用模型。")),
    Topic("vlm", "llmpath.vlm", "stage 13: a tiny vision-language model: CLIP pretraining and a LLaVA-style captioner",
          stage="13", stage_title="多模态：CLIP 对比预训练与 LLaVA 式看图说话",
          tutorial="docs/tutorials/13_multimodal.md", notebook="notebooks/13_multimodal.ipynb",
          config="llmpath.vlm.experiments:CaptionRun", model="llmpath.vlm.model:VLM",
          tokenizer="llmpath.vlm.data:caption_tokenizer_from_state",
          teaches=("把第 7 章 mnist-5k 的手写数字摆到画布上，按模板生成中英文描述（“左边是 3，右边是 7”），"
                   "测试图里的数字图像从未在训练中出现。先用对称 InfoNCE 把第 7 章的 ViT 和一个小文本编码器对齐（CLIP），"
                   "看图文互检的召回率和只凭描述做的零样本数字分类；再照 LLaVA 的做法，把 ViT 的图块特征经投影层"
                   "变成第 9 章 Llama 式解码器的前缀词元：先只训练投影层，再连解码器一起训练。"
                   "比较冻结与训练解码器、有无对比预训练的描述完全匹配率、数字与位置准确率、BLEU 与 chrF，"
                   "并画出每个词写出时注意力落在图像的哪些图块上。投影层加解码器与 Hugging Face 的 "
                   "LlavaForConditionalGeneration 复制权重后 logits 一致。")),
]
TOPICS: dict[str, Topic] = {t.name: t for t in TOPIC_LIST}
